"""One file in, one honest row out: every bad-input case, decoded by content, never a crash."""

import os
import tracemalloc

import numpy as np
import pytest

from genreclf.audio.decode import decode
from genreclf.audio.extract import featurize_file
from genreclf.config import Recipe

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure

R = Recipe()


@pytest.fixture(scope="module")
def cases(mixed_corpus):
    directory, expect = mixed_corpus
    return directory, {k: v for k, v in expect.items() if not k.startswith("long_")}


def test_every_case_gets_the_expected_row(cases):
    directory, expect = cases
    failures = []
    for name, (status, detail) in sorted(expect.items()):
        result = featurize_file(os.path.join(directory, name), R, track_id=name)
        row = result.row
        if row["status"] != status:
            failures.append(f"{name}: {row['status']} ({row['error']}), expected {status}")
        elif status == "ok":
            if row["n_windows"] != detail or result.features.shape != (detail, 128, 513):
                failures.append(f"{name}: {row['n_windows']} windows, expected {detail}")
            if result.features.dtype != np.float16 or not np.isfinite(result.features).all():
                failures.append(f"{name}: features not finite float16")
        else:
            if not row["error"] or (detail and not row["error"].startswith(detail)):
                failures.append(f"{name}: error {row['error']!r}, expected {detail!r}")
            if result.features is not None or row["n_windows"] != 0:
                failures.append(f"{name}: an error row must carry no windows")
    assert not failures, "\n".join(failures)


def test_source_properties_are_reported(cases):
    directory, _ = cases
    row = featurize_file(os.path.join(directory, "wav_96k_named.mp3"), R).row
    assert (row["codec"], row["sample_rate"], row["channels"]) == ("pcm_s16le", 96000, 2)
    row = featurize_file(os.path.join(directory, "adts_aac_named.mp3"), R).row
    assert row["codec"] == "aac"
    row = featurize_file(os.path.join(directory, "mp2_named.mp3"), R).row
    assert row["codec"] == "mp2"
    row = featurize_file(os.path.join(directory, "low_8k_mono.mp3"), R).row
    assert (row["sample_rate"], row["channels"]) == (8000, 1)


def test_durations_are_decoded_not_announced(cases):
    directory, _ = cases
    # VBR without a Xing header: the header-less estimate is wrong, libsndfile reads about half.
    assert featurize_file(os.path.join(directory, "vbr_no_xing.mp3"), R).row["duration_s"] == pytest.approx(30.0, abs=0.1)
    assert featurize_file(os.path.join(directory, "dur_29.9s.mp3"), R).row["duration_s"] == pytest.approx(29.9, abs=1e-3)
    truncated = featurize_file(os.path.join(directory, "truncated.mp3"), R).row
    assert truncated["duration_s"] == pytest.approx(15.0, abs=1.0)
    assert "30.0 s its header announces" in truncated["error"]


def test_resync_past_junk_and_corruption_keeps_the_audio(cases):
    directory, _ = cases
    clean, _ = decode(os.path.join(directory, "junk_prefix.mp3"))
    assert len(clean) / R.sample_rate == pytest.approx(30.0, abs=0.1)
    row = featurize_file(os.path.join(directory, "corrupt_middle.mp3"), R).row
    assert row["status"] == "ok" and row["duration_s"] == pytest.approx(30.0, abs=0.5)


def test_silence_gives_finite_zero_features(cases):
    directory, _ = cases
    feats = featurize_file(os.path.join(directory, "silence.mp3"), R).features
    assert np.isfinite(feats).all() and float(np.abs(feats).max()) < 1e-2


def test_unreadable_and_missing_files_are_rows_not_crashes(tmp_path):
    row = featurize_file(str(tmp_path / "gone.mp3"), R).row
    assert row["status"] == "error" and row["error"].startswith("unreadable file")


def test_too_long_is_an_error_with_the_setting_to_change(tmp_path, make_audio):
    path = make_audio(tmp_path / "long.mp3", 12.0)
    row = featurize_file(path, R, max_duration_s=10.0).row
    assert row["status"] == "error" and "featurize.max_duration_s" in row["error"]


def test_memory_of_a_long_file_is_its_features_not_its_audio(tmp_path, make_audio):
    """A 10-minute file: peak memory beyond the float16 features stays far below the decoded audio."""
    path = make_audio(tmp_path / "long.mp3", 600.0, sr=22050, bit_rate=64000)
    tracemalloc.start()
    result = featurize_file(path, R)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    window_s, hop_s = R.window / R.sample_rate, R.hop / R.sample_rate  # a window every 1.5 s while 90 % of 3 s remains
    starts = np.arange(0.0, 600.0 - R.min_window_fraction * window_s + 1e-9, hop_s)
    assert result.row["n_windows"] == len(starts)  # 399
    whole_audio = 600 * 22050 * 4  # what decoding the file at once would hold: 53 MB
    overhead = peak - sum(b.nbytes for b in result.batches)
    assert overhead < 16 * 2**20, f"{overhead / 2**20:.0f} MB beyond the features (audio would be {whole_audio >> 20} MB)"


def test_window_table_bytes_are_petastorms_encoding(cases):
    """The bulk-built stft column equals NdarrayCodec.encode of each window, byte for byte."""
    import pandas as pd

    from genreclf.audio.extract import window_tables
    from genreclf.formats.schema import window_schema

    directory, _ = cases
    schema = window_schema(R)
    field = schema.fields["stft"]
    path = os.path.join(directory, "dur_4.5s.mp3")
    batch = pd.DataFrame({"path": [path], "track_id": ["t"], "label": ["x"], "size_bytes": [0], "mtime": [0.0]})
    tables = list(window_tables([batch], R, schema, rows_per_table=1, max_duration_s=None))
    assert [t.num_rows for t in tables] == [1, 1]
    features = featurize_file(path, R).features
    for i, t in enumerate(tables):
        assert t["stft"][0].as_py() == bytes(field.codec.encode(field, features[i]))
        assert (t["track_id"][0].as_py(), t["window"][0].as_py(), t["label"][0].as_py()) == ("t", i, "x")
        np.testing.assert_array_equal(field.codec.decode(field, t["stft"][0].as_py()), features[i])


def test_a_fifo_or_a_directory_is_never_read(tmp_path):
    """Opening a FIFO would block forever: it is reported, not read (was 'empty file: 0 bytes')."""
    os.mkfifo(tmp_path / "pipe.mp3")
    assert featurize_file(str(tmp_path / "pipe.mp3"), R).row["error"] == "not a regular file: a FIFO"
    (tmp_path / "dir.mp3").mkdir()
    assert featurize_file(str(tmp_path / "dir.mp3"), R).row["error"] == "not a regular file: a directory"


def _png() -> bytes:
    """A valid 8x8 RGB PNG, made here (the bytes an image renamed .mp3 holds)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(b"".join(b"\x00" + bytes(24) for _ in range(8)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def test_files_that_are_not_audio_say_what_they_are(tmp_path):
    """An image renamed .mp3 and random bytes behind audio magic numbers: 'not audio' naming what the
    probe found, never an exception's text (an image was 'decode failed: AttributeError ...')."""
    (tmp_path / "cover.mp3").write_bytes(_png())
    row = featurize_file(str(tmp_path / "cover.mp3"), R).row
    assert row["error"] == "not audio: an image (png_pipe), no audio stream", row
    rng = np.random.default_rng(0)
    heads = [b"", b"ID3\x03\x00\x00\x00\x00\x00\x10", b"RIFF\x00\x01\x00\x00WAVEfmt ", b"fLaC", b"OggS\x00\x02",
             b"\x00\x00\x00\x18ftypM4A ", b"\xff\xfb\x90\x00", b"GIF89a", b"\xff\xd8\xff\xe0", b"\x1aE\xdf\xa3"]
    for i in range(200):
        path = tmp_path / f"junk{i}.mp3"
        path.write_bytes(heads[i % len(heads)] + rng.bytes(int(rng.choice([10, 1000, 20000]))))
        error = featurize_file(str(path), R).row["error"] or ""
        assert error.split(":")[0] in ("not audio", "no audio frames", "no audio decoded", "truncated",
                                        "shorter than one 3 s window"), (i, error)
        assert "Error" not in error, (i, error)


def _channel_mean(frame) -> np.ndarray:
    """A frame's samples as PyAV gives them (to_ndarray), scaled to [-1, 1] and averaged over channels in float64."""
    fmt, channels = frame.format, len(frame.layout.channels)
    x = frame.to_ndarray().astype(np.float64)
    if not fmt.is_planar:
        x = x.reshape(-1, channels).T
    base = fmt.name.rstrip("p") if fmt.is_planar else fmt.name
    offset, scale = {"u8": (128.0, 128.0), "s16": (0.0, 32768.0), "s32": (0.0, 2.0**31)}.get(base, (0.0, 1.0))
    return ((x - offset) / scale).mean(axis=0)


def test_mixdown_in_blocks_is_the_mean_of_the_channels_frame_by_frame(cases):
    """Every ok case (mp3, wav, aac, mp2, m4a, flac, opus, vorbis; mono and stereo), decoded at its own rate
    (no resampler): the streamed mono signal equals each frame's channel mean computed here from PyAV's
    arrays in float64, within float32 rounding."""
    from genreclf.audio.decode import AudioReader

    directory, expect = cases
    checked = 0
    for name, (status, _) in sorted(expect.items()):
        if status != "ok":
            continue
        path = os.path.join(directory, name)
        with AudioReader(path, 1) as probe:
            rates = {f.sample_rate for f in probe.frames()}
        with AudioReader(path, 1) as oracle:
            expected = np.concatenate([_channel_mean(f) for f in oracle.frames()])
        if len(rates) != 1:
            continue
        with AudioReader(path, rates.pop()) as reader:
            got = np.concatenate(list(reader.chunks()))
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, atol=2e-7, rtol=1e-6, err_msg=name)
        checked += 1
    assert checked >= 12
