"""Deterministic synthetic music and real encoded files, for the demo corpus, tests and benchmarks.

Each style differs in tempo, rhythm and timbre (drum patterns, bass lines, chords), not in a single
tone, so a genre model has something musical to learn. Files are encoded with PyAV's own encoders
(mp3 via LAME, AAC, mp2, FLAC, Opus, WAV), so tests need nothing outside the project's dependencies.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

STYLES = ("ambient", "techno", "hiphop", "rock", "jazz")

# container format and encoder per file kind
_FORMATS = {
    "mp3": ("mp3", "libmp3lame"),
    "mp2": ("mp2", "mp2"),
    "adts": ("adts", "aac"),
    "m4a": ("mp4", "aac"),
    "flac": ("flac", "flac"),
    "wav": ("wav", "pcm_s16le"),
    "opus": ("ogg", "libopus"),
    "vorbis": ("ogg", "vorbis"),  # FFmpeg's native encoder, marked experimental
}


def _rng(*key) -> np.random.Generator:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _env(n, sr, attack, decay):
    t = np.arange(n) / sr
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _place(out, sound, start):
    if start >= out.size:
        return
    end = min(out.size, start + sound.size)
    out[start:end] += sound[: end - start]


def _kick(sr, rng):
    n = int(0.25 * sr)
    t = np.arange(n) / sr
    freq = 50 + 110 * np.exp(-t * 30)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr) * _env(n, sr, 0.002, 0.09)


def _snare(sr, rng):
    n = int(0.2 * sr)
    t = np.arange(n) / sr
    return (0.7 * rng.standard_normal(n) + 0.4 * np.sin(2 * np.pi * 190 * t)) * _env(n, sr, 0.001, 0.05)


def _hat(sr, rng, decay=0.02):
    n = int(0.08 * sr)
    noise = rng.standard_normal(n)
    noise = np.diff(noise, prepend=0.0)  # crude high-pass: hats are bright
    return 0.5 * noise * _env(n, sr, 0.0005, decay)


def _tone(freq, dur, sr, harmonics=(1.0,), attack=0.01, decay=0.5, vibrato=0.0):
    n = int(dur * sr)
    t = np.arange(n) / sr
    phase = 2 * np.pi * freq * t + vibrato * np.sin(2 * np.pi * 5.5 * t)
    y = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))
    return y * _env(n, sr, attack, decay)


def _saw(freq, dur, sr, decay=0.3, drive=1.0):
    n = int(dur * sr)
    t = np.arange(n) / sr
    y = 2 * ((freq * t) % 1.0) - 1
    y = y + 2 * ((freq * 1.005 * t) % 1.0) - 1
    return np.tanh(drive * y) * _env(n, sr, 0.003, decay)


def _midi(note):
    return 440.0 * 2 ** ((note - 69) / 12)


def synthesize(style: str, seed: int = 0, duration_s: float = 30.0, sr: int = 44100) -> np.ndarray:
    """A mono float32 track in ``style`` (one of :data:`STYLES`), the same for the same arguments."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    rng = _rng(style, seed)
    n = int(duration_s * sr)
    out = np.zeros(n + sr, np.float64)
    root = 40 + int(rng.integers(0, 12))
    if style == "ambient":
        bpm = 60 * rng.uniform(0.9, 1.1)
        bar = 4 * 60 / bpm
        t = 0.0
        while t < duration_s:
            chord = root + 12 + np.array([0, 7, 14, 16]) + int(rng.choice([0, 5, 7, -3]))
            for note in chord:
                _place(out, 0.12 * _tone(_midi(note), bar * 1.5, sr, (1, 0.3), attack=1.2, decay=3.0,
                                         vibrato=0.3), int(t * sr))
            t += bar
        wash = np.convolve(rng.standard_normal(n + sr), np.ones(200) / 200, mode="same")
        out += 0.05 * wash
    else:
        bpm = {"techno": 128, "hiphop": 88, "rock": 140, "jazz": 160}[style] * rng.uniform(0.95, 1.05)
        beat = 60 / bpm
        kick, snare = _kick(sr, rng), _snare(sr, rng)
        n_beats = int(duration_s / beat) + 1
        bass_line = root + np.array([0, 0, 7, 5, 3, 0, 10, 7])
        for b in range(n_beats):
            s = int(b * beat * sr)
            if style == "techno":
                _place(out, 0.9 * kick, s)
                _place(out, 0.25 * _hat(sr, rng), s + int(beat / 2 * sr))
                _place(out, 0.3 * _saw(_midi(root - 12 + (b % 4 == 3) * 7), beat / 2, sr, decay=0.12),
                       s + int(beat / 2 * sr))
            elif style == "hiphop":
                if b % 4 in (0,) or (b % 8 == 2):
                    _place(out, 1.0 * kick, s)
                if b % 4 in (1, 3):
                    _place(out, 0.6 * snare, s)
                for k, swing in enumerate((0.0, 0.62)):
                    _place(out, 0.12 * _hat(sr, rng), s + int(swing * beat * sr))
                if b % 2 == 0:
                    _place(out, 0.45 * _tone(_midi(bass_line[(b // 2) % 8] - 12), beat * 1.8, sr, (1, 0.2),
                                             decay=0.6), s)
            elif style == "rock":
                _place(out, 0.8 * (kick if b % 2 == 0 else snare), s)
                if b % 16 == 0:
                    _place(out, 0.3 * _hat(sr, rng, decay=0.6), s)
                for half in (0, 1):
                    note = bass_line[(b // 2) % 8]
                    chord = _saw(_midi(note), beat / 2, sr, decay=0.4, drive=4.0) + \
                        _saw(_midi(note + 7), beat / 2, sr, decay=0.4, drive=4.0)
                    _place(out, 0.12 * chord, s + int(half * beat / 2 * sr))
            elif style == "jazz":
                for swing in (0.0, 0.66):  # swung ride
                    _place(out, 0.15 * _hat(sr, rng, decay=0.25), s + int(swing * beat * sr))
                walk = root - 12 + int(rng.choice([0, 2, 3, 5, 7, 9, 10, 12]))
                _place(out, 0.4 * _tone(_midi(walk), beat, sr, (1, 0.5, 0.2), attack=0.005, decay=0.3), s)
                if rng.random() < 0.35:
                    for note in root + 12 + np.array([0, 4, 10, 14]):
                        _place(out, 0.08 * _tone(_midi(note), beat * 0.7, sr, (1, 0.4, 0.15), decay=0.25),
                               s + int(0.66 * beat * sr))
    y = out[:n]
    peak = np.max(np.abs(y)) or 1.0
    return (0.8 * y / peak).astype(np.float32)


def encode(path: str, samples: np.ndarray, sample_rate: int, kind: str = "mp3", *, channels: int = 2,
           bit_rate: int | None = 128000, vbr_quality: int | None = None, xing: bool = True) -> str:
    """Encode mono ``samples`` to ``path`` as ``kind`` (mp3, mp2, adts, m4a, flac, wav, opus, vorbis).

    ``channels=2`` writes a slightly different right channel. ``vbr_quality`` (0-9) makes a VBR mp3;
    ``xing=False`` omits the Xing/Info header, as some encoders do.
    """
    import av

    fmt, codec = _FORMATS[kind]
    y = np.asarray(samples, np.float32)
    data = y[None, :] if channels == 1 else np.stack([y, np.roll(y, 7) * 0.9])
    layout = "mono" if channels == 1 else "stereo"
    options = {} if xing else {"write_xing": "0"}
    with av.open(path, "w", format=fmt, options=options) as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = layout
        ctx = stream.codec_context
        if codec == "vorbis":
            ctx.options = {"strict": "-2"}
        if vbr_quality is not None:
            ctx.flags |= av.codec.context.Flags.qscale
            ctx.global_quality = vbr_quality * 118  # FF_QP2LAMBDA
        elif bit_rate and kind not in ("flac", "wav"):
            ctx.bit_rate = bit_rate
        step = 4096
        for i in range(0, data.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i:i + step]), format="fltp",
                                               layout=layout)
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _write_track(args):
    path, style, seed, duration_s, sr, channels, bit_rate = args
    encode(path, synthesize(style, seed, duration_s, sr), sr, "mp3", channels=channels, bit_rate=bit_rate)
    return path


def make_corpus(directory: str, tracks_per_style: int = 8, duration_s: float = 30.0, broken: bool = True,
                workers: int | None = None) -> dict:
    """Write the demo corpus: mp3s of every style at mixed rates, bitrates and channel counts.

    Returns {relative path: style} for the good files (the labels). With ``broken``, also writes a
    few unusable files (empty, text, truncated, too short) whose rows must say why. Encodes on
    ``workers`` processes (default: all cores).
    """
    from multiprocessing import get_context

    os.makedirs(directory, exist_ok=True)
    rates = (44100, 32000, 48000, 22050)
    bitrates = (96000, 128000, 192000)
    labels, jobs = {}, []
    for style in STYLES:
        os.makedirs(os.path.join(directory, style), exist_ok=True)
        for i in range(tracks_per_style):
            rel = os.path.join(style, f"{style}_{i:02d}.mp3")
            sr = rates[(i + STYLES.index(style)) % len(rates)]
            jobs.append((os.path.join(directory, rel), style, i, duration_s, sr, 1 + (i % 2),
                         bitrates[i % len(bitrates)]))
            labels[rel] = style
    with get_context("spawn").Pool(workers or os.cpu_count() or 1) as pool:
        pool.map(_write_track, jobs)
    if broken:
        bad = os.path.join(directory, "broken")
        os.makedirs(bad, exist_ok=True)
        open(os.path.join(bad, "empty.mp3"), "wb").close()
        with open(os.path.join(bad, "notes.mp3"), "w") as f:
            f.write("these are liner notes, not audio\n" * 20)
        encode(os.path.join(bad, "short.mp3"), synthesize("rock", 99, 2.0, 44100), 44100)
        whole = os.path.join(bad, "_whole.mp3")
        encode(whole, synthesize("jazz", 99, 30.0, 44100), 44100)
        with open(whole, "rb") as f:
            data = f.read()
        os.remove(whole)
        with open(os.path.join(bad, "truncated.mp3"), "wb") as f:
            f.write(data[: len(data) // 3])
    return labels


def synthetic_track_id(t: int) -> str:
    return f"track{t:03d}"


def write_windows(windows_url: str, *, n_tracks: int = 30, windows_per_track: tuple = (3, 9), files: int = 3,
                  rows_per_group: int = 11, labels=("ambient", "jazz", "rock"), seed: int = 0) -> dict:
    """A windows dataset written by the featurize writer, without audio or Spark: for tests and benchmarks.

    Track ``t`` (id :func:`synthetic_track_id`) gets a window count drawn from ``windows_per_track``
    (low, high exclusive) and label ``labels[t % len(labels)]``; tracks are dealt to ``files`` files
    in row groups of ``rows_per_group``. Window ``w`` of track ``t`` holds ``t`` at [0, 0] and ``w`` at
    [0, 1] (exact in float16), random magnitudes elsewhere, so a reader can check every row.
    Returns ``{track_id: (label, n_windows)}``.
    """
    from genreclf.audio.extract import WindowTableBuilder
    from genreclf.config import Recipe
    from genreclf.formats.features import write_window_file
    from genreclf.formats.schema import window_schema

    recipe = Recipe()
    rng = np.random.default_rng(seed)
    tracks = {synthetic_track_id(t): (labels[t % len(labels)], int(rng.integers(*windows_per_track)))
              for t in range(n_tracks)}
    noise = rng.random((8, recipe.frames - 1, recipe.bands), dtype=np.float32).astype(np.float16)
    ids = list(tracks)
    for f in range(files):
        def tables(mine=ids[f::files]):
            builder = WindowTableBuilder(window_schema(recipe).fields["stft"], recipe, rows_per_group)
            for tid in mine:
                label, n = tracks[tid]
                for w in range(n):
                    x = np.empty(recipe.shape, np.float16)
                    x[0] = 0
                    x[0, 0], x[0, 1] = int(tid[5:]), w
                    x[1:] = noise[(int(tid[5:]) + w) % len(noise)]
                    builder.add(tid, w, label, x)
                    if builder.full():
                        yield builder.table()
            if len(builder):
                yield builder.table()

        write_window_file(windows_url, f"part-synthetic-{f:05d}.parquet", 0, tables())
    return tracks
