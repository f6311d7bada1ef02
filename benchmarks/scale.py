"""Scale: what catalogues of 10 k to 1 M rows cost the driver and the tasks, what a crash costs, and
what a million real tracks would cost (extrapolated from measured growth, and said so).

    python -m benchmarks.scale [--out bench-output/scale] [--sizes 10000,100000,1000000] [--copies 16]

Every job is a real ``./spark-submit.sh --master local[2]`` run, timed from outside:
- **dead paths**: a catalogue CSV of N paths that do not exist, through featurize and score: the
  driver's listing, planning and commit, and what tasks a run still starts (none: the driver
  answers them). Time per 1 k rows, tasks, the driver's peak RSS, output files.
- **real audio**: the shared corpus' 110 clips hard-linked ``--copies`` times (16: 1,760 files) plus
  10,000 dead paths: an uninterrupted featurize and score; the same runs SIGKILLed (process group)
  once ~60 % of their tasks have written their records, then rerun: rerun time over the
  uninterrupted run's, outputs compared; then ``score --incremental`` after 53 new files.
- **commit record on the S3 test server**: the footers of many small window files read with one
  thread and with ``FOOTER_THREADS``, as featurize's commit reads them.

Results go to ``OUT/scale.json``; docs/performance.md ("Scale") holds a run's table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from benchmarks.host import cpu_name

log = logging.getLogger("genreclf.bench.scale")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus-train", "clips")
PLAN = re.compile(r"to (?:open|score) in (\d+) tasks")


def job(*args, kill_share: float | None = None, tasks_dir: str | None = None) -> dict:
    """One spark-submit run (local[2]); with ``kill_share``, SIGKILL its process group once that share
    of its planned tasks have records in ``tasks_dir``. Returns wall seconds and what its log says."""
    command = [os.path.join(ROOT, "spark-submit.sh"), "--master", "local[2]", *map(str, args)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    killed = None
    while kill_share is not None and proc.poll() is None:
        planned = next((int(m.group(1)) for m in map(PLAN.search, list(lines)) if m), None)
        done = len([n for n in os.listdir(tasks_dir) if n.endswith(".parquet") and not n.startswith(".")]) \
            if os.path.isdir(tasks_dir) else 0
        if planned and done >= max(1, round(kill_share * planned)):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = (done, planned)
        time.sleep(0.05)
    proc.wait()
    reader.join(timeout=30)
    wall = time.perf_counter() - started
    text = "".join(lines)
    if killed is None and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{text[-3000:]}")
    found = {"wall_s": round(wall, 2), "killed": killed}
    for key, pattern in (("tasks", r"(\d+) tasks; driver peak RSS"), ("rss_mb", r"driver peak RSS (\d+) MB"),
                         ("score_files", r"scores/ in (\d+) files"), ("kept", r"resuming: (\d+) of")):
        m = re.search(pattern, text)
        found[key] = int(m.group(1)) if m else None
    found["log_tail"] = text[-1500:] if killed is None else ""
    return found


def dead_catalogue(directory: str, n: int) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"dead-{n}.csv")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("path\n")
            f.writelines(f"gone/{i:07d}.mp3\n" for i in range(n))
    return path


def window_files(features: str) -> int:
    return len([n for n in os.listdir(os.path.join(features, "windows")) if n.endswith(".parquet")])


def dead_paths(out: str, bundle: str, sizes: list) -> list:
    rows = []
    for n in sizes:
        catalogue = dead_catalogue(os.path.join(out, "catalogues"), n)
        feats, scores = os.path.join(out, f"dead-features-{n}"), os.path.join(out, f"dead-scores-{n}")
        f = job("featurize", "--input", catalogue, "--output", feats, "--overwrite")
        s = job("score", "--model", bundle, "--input", catalogue, "--output", scores, "--overwrite")
        import pandas as pd

        from genreclf.formats.featureset import read_tracks
        from genreclf.formats.scoreoutput import read_scores

        tracks = read_tracks(feats)
        scored = read_scores(scores)
        row = {"rows": n, "featurize_s": f["wall_s"], "featurize_tasks": f["tasks"], "featurize_rss_mb": f["rss_mb"],
               "featurize_files": window_files(feats) + 1, "score_s": s["wall_s"], "score_tasks": s["tasks"],
               "score_rss_mb": s["rss_mb"], "score_files": s["score_files"],
               "unreadable_rows": int(tracks["error"].str.startswith("unreadable file").sum()),
               "score_unreadable_rows": int(pd.Series(scored["error"]).str.startswith("unreadable file").sum())}
        rows.append(row)
        log.info("dead paths %s", row)
        shutil.rmtree(feats, ignore_errors=True)
        shutil.rmtree(scores, ignore_errors=True)
    return rows


def linked_corpus(out: str, copies: int, extra: int = 0) -> tuple:
    """The shared clips hard-linked ``copies`` times under out/real (plus ``extra`` new names for the
    incremental run), and a catalogue of them and 10,000 dead paths."""
    clips = sorted(os.path.join(CORPUS, n) for n in os.listdir(CORPUS) if n.endswith(".mp3"))
    real = os.path.join(out, "real")
    os.makedirs(real, exist_ok=True)
    paths = []
    for c in range(copies):
        for clip in clips:
            target = os.path.join(real, f"c{c:02d}-{os.path.basename(clip)}")
            if not os.path.exists(target):
                os.link(clip, target)
            paths.append(target)
    for i in range(extra):
        target = os.path.join(real, f"new-{i:03d}-{os.path.basename(clips[i % len(clips)])}")
        if not os.path.exists(target):
            os.link(clips[i % len(clips)], target)
        paths.append(target)
    catalogue = os.path.join(out, f"real-{copies}-{extra}.csv")
    with open(catalogue, "w") as f:
        f.write("path\n")
        f.writelines(p + "\n" for p in paths)
        f.writelines(os.path.join(out, "gone", f"{i:05d}.mp3") + "\n" for i in range(10_000))
    return catalogue, len(paths)


def same_outputs(a: str, b: str, kind: str) -> bool:
    import numpy as np

    if kind == "featurize":
        from genreclf.formats.featureset import read_tracks

        ta, tb = (read_tracks(x).sort_values("track_id").reset_index(drop=True) for x in (a, b))
        return ta.drop(columns=["mtime"]).equals(tb.drop(columns=["mtime"]))
    from genreclf.formats.scoreoutput import read_scores

    sa, sb = read_scores(a), read_scores(b)
    ok = sa.status == "ok"
    return (sa[["track_id", "status", "error"]].equals(sb[["track_id", "status", "error"]]) and
            np.allclose(np.stack(sa.loc[ok, "probability_vector"]), np.stack(sb.loc[ok, "probability_vector"]),
                        atol=1e-5))


def real_audio(out: str, bundle: str, copies: int, task_mb: int) -> dict:
    catalogue, n_real = linked_corpus(out, copies)
    conf = os.path.join(out, "scale.toml")
    with open(conf, "w") as f:
        f.write(f"[featurize]\ntask_mb = {task_mb}\n")
    result = {"real_files": n_real, "dead_files": 10_000, "task_mb": task_mb}
    for kind in ("featurize", "score"):
        full, resumed = os.path.join(out, f"{kind}-full"), os.path.join(out, f"{kind}-resumed")
        for d in (full, resumed):
            shutil.rmtree(d, ignore_errors=True)
        head = ["featurize", "--conf", conf] if kind == "featurize" else ["score", "--model", bundle, "--conf", conf]
        uninterrupted = job(*head, "--input", catalogue, "--output", full)
        killed = job(*head, "--input", catalogue, "--output", resumed, kill_share=0.6,
                     tasks_dir=os.path.join(resumed, "_tasks"))
        rerun = job(*head, "--input", catalogue, "--output", resumed)
        result[kind] = {"uninterrupted_s": uninterrupted["wall_s"], "tasks": uninterrupted["tasks"],
                        "killed_after_s": killed["wall_s"], "records_at_kill": killed["killed"],
                        "rerun_s": rerun["wall_s"], "kept": rerun["kept"],
                        "rerun_over_uninterrupted": round(rerun["wall_s"] / uninterrupted["wall_s"], 3),
                        "equal": same_outputs(resumed, full, kind),
                        "core_s_per_track": round(uninterrupted["wall_s"] * 2 / n_real, 4)}
        log.info("%s %s", kind, result[kind])
    catalogue, n_more = linked_corpus(out, copies, extra=53)
    inc = job("score", "--model", bundle, "--conf", conf, "--input", catalogue, "--output",
              os.path.join(out, "score-full"), "--incremental")
    result["score_incremental"] = {"new_files": n_more - n_real, "wall_s": inc["wall_s"],
                                   "over_full_run": round(inc["wall_s"] / result["score"]["uninterrupted_s"], 3)}
    log.info("score --incremental %s", result["score_incremental"])
    return result


def s3_commit_record(out: str, n_files: int) -> dict:
    """Footers of ``n_files`` small window files on the S3 test server: one thread vs FOOTER_THREADS."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from genreclf.formats import features
    from genreclf.formats.schema import window_arrow_schema
    from genreclf.io import storage
    from tests.s3server import CREDENTIALS, MotoServer

    os.environ.update(CREDENTIALS)
    server = MotoServer(out).start()
    try:
        storage.configure({"endpoint_url": server.endpoint})
        fs = pafs.S3FileSystem(endpoint_override=server.endpoint.split("://")[1], scheme="http",
                               allow_bucket_creation=True)
        fs.create_dir("scale")
        local = os.path.join(out, "one.parquet")
        pq.write_table(window_arrow_schema().empty_table(), local)
        data = open(local, "rb").read()
        paths = [f"scale/windows/part-{i:06d}.parquet" for i in range(n_files)]
        from concurrent.futures import ThreadPoolExecutor

        def put(p):
            with fs.open_output_stream(p) as f:
                f.write(data)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, paths))
        timing = {}
        for threads in (1, features.FOOTER_THREADS):
            features.FOOTER_THREADS = threads
            started = time.perf_counter()
            features.window_facts("s3://scale/windows", paths)
            timing[threads] = round(time.perf_counter() - started, 2)
        return {"files": n_files, "seconds_by_threads": timing}
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-output/scale")
    p.add_argument("--sizes", default="10000,100000,1000000", help="dead-path catalogue sizes")
    p.add_argument("--copies", type=int, default=16, help="times the 110 shared clips are linked (16: 1,760 files)")
    p.add_argument("--task-mb", type=int, default=64, help="[featurize] task_mb of the real-audio runs (64: 16 tasks "
                   "for 1,760 files; the default 256 makes 4, too few to kill at 60 %%)")
    p.add_argument("--s3-files", type=int, default=2000, help="window files on the S3 test server")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: dead,real,s3")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    from benchmarks.run import make_bundle
    from genreclf.config import FMA_GENRES

    bundle = make_bundle(out, list(FMA_GENRES))
    skip = set(filter(None, args.skip.split(",")))
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if "dead" not in skip:
        results["dead_paths"] = dead_paths(out, bundle, [int(x) for x in args.sizes.split(",")])
    if "real" not in skip:
        results["real"] = real_audio(out, bundle, args.copies, args.task_mb)
    if "s3" not in skip:
        results["s3_commit_record"] = s3_commit_record(out, args.s3_files)
    with open(os.path.join(out, "scale.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(report(results))
    return 0


def report(r: dict) -> str:
    lines = [f"scale benchmark, {r['cpu']}, {r['cores']} cores, {r['date']} (spark-submit --master local[2])"]
    if r.get("real"):
        lines.append(f"  real-audio runs with [featurize] task_mb = {r['real']['task_mb']}")
    for d in r.get("dead_paths", []):
        n = d["rows"]
        lines.append(f"  dead paths {n:>9,}: featurize {d['featurize_s']:7.1f} s ({1000 * d['featurize_s'] / n:6.3f} s"
                     f" per 1 k), {d['featurize_tasks']} tasks, driver {d['featurize_rss_mb']} MB, "
                     f"{d['featurize_files']} files; score {d['score_s']:7.1f} s ({1000 * d['score_s'] / n:6.3f} s"
                     f" per 1 k), {d['score_tasks']} tasks, driver {d['score_rss_mb']} MB, {d['score_files']} "
                     f"files; rows {d['unreadable_rows']:,} / {d['score_unreadable_rows']:,}")
    real = r.get("real")
    if real:
        for kind in ("featurize", "score"):
            k = real[kind]
            lines.append(f"  {kind} {real['real_files']:,} real + {real['dead_files']:,} dead: {k['uninterrupted_s']:.1f} s "
                         f"in {k['tasks']} tasks ({k['core_s_per_track']:.3f} core-s per real track, whole job); "
                         f"killed at {k['records_at_kill']} records, rerun {k['rerun_s']:.1f} s = "
                         f"{k['rerun_over_uninterrupted']:.2f} x uninterrupted, kept {k['kept']}, equal {k['equal']}")
        inc = real["score_incremental"]
        lines.append(f"  score --incremental, {inc['new_files']} new files: {inc['wall_s']:.1f} s = "
                     f"{inc['over_full_run']:.2f} x the full run")
        per_track = real["featurize"]["core_s_per_track"] + real["score"]["core_s_per_track"]
        lines.append(f"  1 M real tracks (extrapolated: whole-job core-s per track x 1 M): featurize "
                     f"{real['featurize']['core_s_per_track'] * 1e6 / 3600:.0f} core-h, score "
                     f"{real['score']['core_s_per_track'] * 1e6 / 3600:.0f} core-h, together {per_track * 1e6 / 3600:.0f}")
    s3 = r.get("s3_commit_record")
    if s3:
        t = s3["seconds_by_threads"]
        lines.append(f"  commit record on the S3 test server, {s3['files']:,} window files: footers "
                     + ", ".join(f"{k} thread(s) {v:.1f} s" for k, v in t.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
