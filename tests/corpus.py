"""The mixed real-world test corpus: every bad-input case of the featurize issue, made at test time.

``build(directory, make_audio)`` writes the files and returns {file name: expectation}, where an
expectation is ("ok", n_windows) or ("error", reason prefix).
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from genreclf.audio.synth import encode, synthesize

#: How the shared bundle (conftest's ``labelled``) is trained: one epoch, small batches, one
#: validation track per style.
LABELLED_TRAINING = dict(epochs=1, batch_size=8, val_fraction=0.34, seed=1)


def build(directory, make_audio, long_file=True):
    """The files are encoded in threads (FFmpeg's encoders release the GIL): 18 s -> ~9 s on 2 cores."""
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        encodes = []

        def later(path, *args, **kw):
            encodes.append(pool.submit(make_audio, path, *args, **kw))

        expect = _build(str(directory), later, long_file)
        for done in encodes:
            done.result()
    return expect


def _build(d, make_audio, long_file):
    os.makedirs(d, exist_ok=True)
    p = lambda name: os.path.join(d, name)  # noqa: E731
    rng = np.random.default_rng(42)
    expect = {}
    if long_file:  # the longest first: 6 s of encoding beside the rest
        make_audio(p("long_10min.mp3"), 600.0, sr=22050, bit_rate=64000)
        expect["long_10min.mp3"] = ("ok", 399)

    open(p("empty.mp3"), "wb").close()
    expect["empty.mp3"] = ("error", "empty file")
    with open(p("text.mp3"), "w") as f:
        f.write("Track 1 - liner notes. This is not audio at all.\n" * 40)
    expect["text.mp3"] = ("error", "not audio")
    with open(p("random.mp3"), "wb") as f:
        f.write(rng.bytes(64 * 1024))
    expect["random.mp3"] = ("error", None)  # any error: random bytes may probe as a format, never as audio
    with open(p("id3only.mp3"), "wb") as f:  # an ID3v2.4 tag with a title frame and padding, no frames
        frame = b"TIT2" + (7).to_bytes(4, "big") + b"\x00\x00" + b"\x03title!"
        body = frame + b"\x00" * 1000
        size = len(body)
        syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
        f.write(b"ID3\x04\x00\x00" + syncsafe + body)
    expect["id3only.mp3"] = ("error", "no audio frames")

    for seconds, outcome in [(2.0, ("error", "shorter than one 3 s window")), (2.6, ("error", "shorter than one")),
                             (2.8, ("ok", 1)), (3.0, ("ok", 1)), (4.5, ("ok", 2)), (29.9, ("ok", 19)),
                             (30.0, ("ok", 19))]:
        name = f"dur_{seconds:g}s.mp3"
        make_audio(p(name), seconds, sr=44100)
        expect[name] = outcome

    make_audio(p("silence.mp3"), 30.0, silent=True)
    expect["silence.mp3"] = ("ok", 19)
    make_audio(p("low_8k_mono.mp3"), 30.0, sr=8000, bit_rate=32000)
    expect["low_8k_mono.mp3"] = ("ok", 19)
    make_audio(p("wav_96k_named.mp3"), 30.0, sr=96000, kind="wav", channels=2)
    expect["wav_96k_named.mp3"] = ("ok", 19)
    make_audio(p("adts_aac_named.mp3"), 30.0, sr=44100, kind="adts", channels=2)
    expect["adts_aac_named.mp3"] = ("ok", 19)
    make_audio(p("mp2_named.mp3"), 30.0, sr=44100, kind="mp2", channels=2, bit_rate=192000)
    expect["mp2_named.mp3"] = ("ok", 19)
    make_audio(p("vbr_no_xing.mp3"), 30.0, sr=44100, channels=2, vbr_quality=4, xing=False)
    expect["vbr_no_xing.mp3"] = ("ok", 19)
    make_audio(p("stereo.m4a"), 30.0, sr=44100, kind="m4a", channels=2)
    expect["stereo.m4a"] = ("ok", 19)
    make_audio(p("lossless.flac"), 30.0, sr=44100, kind="flac")
    expect["lossless.flac"] = ("ok", 19)
    make_audio(p("voice.opus"), 30.0, sr=48000, kind="opus", channels=2)
    expect["voice.opus"] = ("ok", 19)
    make_audio(p("vorbis.ogg"), 30.0, sr=44100, kind="vorbis", channels=2)
    expect["vorbis.ogg"] = ("ok", 19)
    make_audio(p("UPPER CASE.MP3"), 30.0)
    expect["UPPER CASE.MP3"] = ("ok", 19)
    make_audio(p("Ünïcödé — naïve café.mp3"), 30.0)
    expect["Ünïcödé — naïve café.mp3"] = ("ok", 19)

    whole = p("_whole.tmp")
    encode(whole, synthesize("jazz", 3, 30.0, 44100), 44100, "mp3", channels=2)
    with open(whole, "rb") as f:
        data = f.read()
    os.remove(whole)
    with open(p("junk_prefix.mp3"), "wb") as f:
        f.write(rng.bytes(100 * 1024) + data)
    expect["junk_prefix.mp3"] = ("ok", 19)
    corrupt = bytearray(data)
    mid = len(data) // 2
    corrupt[mid:mid + 4096] = rng.bytes(4096)
    with open(p("corrupt_middle.mp3"), "wb") as f:
        f.write(bytes(corrupt))
    expect["corrupt_middle.mp3"] = ("ok", 19)
    with open(p("truncated.mp3"), "wb") as f:  # its Xing header still announces 30 s
        f.write(data[: len(data) // 2])
    expect["truncated.mp3"] = ("error", "truncated")
    return expect
