#!/usr/bin/env bash
# Run a genreclf job with spark-submit.
#
#   ./spark-submit.sh [--master URL] [--properties-file FILE] [--archives ENV.tar.gz#env] [--conf K=V]... \
#                     JOB [job options]
#
# JOB is featurize | train | evaluate | score (see `./spark-submit.sh JOB --help`).
# train and evaluate run as one plain Python process (TensorFlow; the GPU when there is one).
# Defaults: --master local[*] with conf/spark-local.conf; any other master uses conf/spark-cluster.conf.
# The genreclf package is shipped to executors as a zip (--py-files). For a cluster without our
# Python environment, `make pack` and pass --archives build/genreclf-env.tar.gz#env: the
# executors then run ./env/bin/python (docs/cluster.md says what the archive assumes of nodes).
# Uses .venv when present, the spark-submit of the pinned pyspark unless $SPARK_HOME is set.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

PY="${GENRECLF_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi

MASTER="local[*]"
PROPS=""
ARCHIVE=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --master) MASTER="$2"; shift 2 ;;
    --properties-file) PROPS="$2"; shift 2 ;;
    --archives) ARCHIVE="$2"; shift 2 ;;
    --conf) EXTRA+=(--conf "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "spark-submit.sh: unknown option $1 (options go before the job name)" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { usage >&2; exit 2; }
JOB="$1"; shift
SCRIPT="$HERE/jobs/$JOB.py"
[ -f "$SCRIPT" ] || { echo "spark-submit.sh: unknown job '$JOB' (featurize, train, evaluate, score)" >&2; exit 2; }

case "$JOB" in
  train|evaluate)  # single-process TensorFlow jobs: no Spark needed (a GPU node may have none)
    export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-${TMPDIR:-/tmp}/genreclf-numba-cache}"
    exec env PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m "jobs.$JOB" "$@" ;;
esac

if [ -z "$PROPS" ]; then
  case "$MASTER" in local*) PROPS="$HERE/conf/spark-local.conf" ;; *) PROPS="$HERE/conf/spark-cluster.conf" ;; esac
fi
# Local mode talks to itself only: bind to the loopback (Spark otherwise warns that the hostname
# resolves to it and picks another interface). A cluster's driver keeps Spark's own choice.
case "$MASTER" in local*) export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}" ;; esac
# The driver plans its tasks for a local master's cores without starting Spark (genreclf/io/spark.py).
export GENRECLF_SPARK_MASTER="$MASTER"

if [ -n "${SPARK_HOME:-}" ]; then
  SUBMIT="$SPARK_HOME/bin/spark-submit"
else
  SUBMIT="$("$PY" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))')"
fi

# Ship the library as a zip so executors import the same code as the driver (written under a name of
# this process and renamed: two jobs started at once from one checkout each ship a whole zip).
BUILD="$HERE/build"
mkdir -p "$BUILD"
ZIP="$BUILD/genreclf.zip"
(cd "$HERE" && "$PY" - "$ZIP" <<'PYEOF'
import os, sys, zipfile
partial = f"{sys.argv[1]}.{os.getpid()}.tmp"
with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
    for root, dirs, files in os.walk("genreclf"):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                z.write(os.path.join(root, f))
os.replace(partial, sys.argv[1])
PYEOF
)

export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PY}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-${TMPDIR:-/tmp}/genreclf-numba-cache}"
# petastorm's pyarrow-14 deprecation notices say nothing to users; workers never import our filters.
QUIET="ignore::FutureWarning:petastorm.fs_utils"
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}$QUIET"
ARGS=(--master "$MASTER" --properties-file "$PROPS" --py-files "$ZIP"
      --conf "spark.driver.extraJavaOptions=-Dlog4j2.configurationFile=file:$HERE/conf/log4j2.properties"
      --conf "spark.executorEnv.NUMBA_CACHE_DIR=$NUMBA_CACHE_DIR"
      --conf "spark.executorEnv.PYTHONWARNINGS=$QUIET")
if [ -n "$ARCHIVE" ] && [[ "$MASTER" == local* ]]; then
  echo "spark-submit.sh: --archives ships a Python environment to a cluster's executors; with --master $MASTER the" \
       "tasks run in this process's Python ($PY): drop --archives, or give the cluster's --master" >&2
  exit 2
fi
if [ -n "$ARCHIVE" ]; then
  # Executors run the unpacked archive's Python; this driver keeps its own. The driver is this
  # process, started by us, not by spark-submit: PySpark's context names the workers' Python from
  # PYSPARK_PYTHON alone (spark-submit used to copy spark.pyspark.python into it), so set both.
  ARGS+=(--archives "$ARCHIVE" --conf "spark.pyspark.python=./${ARCHIVE##*#}/bin/python"
         --conf "spark.pyspark.driver.python=$PYSPARK_DRIVER_PYTHON")
  export PYSPARK_PYTHON="./${ARCHIVE##*#}/bin/python"
else
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
fi
# A --conf spark.pyspark.python=P of the caller's names the workers' Python the same way.
for kv in "${EXTRA[@]}"; do
  case "$kv" in spark.pyspark.python=*) export PYSPARK_PYTHON="${kv#spark.pyspark.python=}" ;; esac
done

# Class data sharing: the driver JVM maps a dump of the classes a job loads instead of loading them
# one by one: a job with no tasks measured 7.5 s -> 4.9 s, and 10.7 -> 6.5 s of CPU (2-core Zen 4).
# `make install` makes the dump once per JVM and Spark (GENRECLF_SPARK_CDS=dump: a job run to
# completion writes it, renamed into place only when whole; a partial dump would crash the JVM).
# Without it, or with another JVM or Spark, jobs start as before.
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
CDS="$BUILD/spark-cds-$( ("$JAVA" -version 2>&1; echo "$SUBMIT") | cksum | cut -d' ' -f1).jsa"
if [ "${GENRECLF_SPARK_CDS:-}" = dump ]; then
  PARTIAL="$CDS.$$.tmp"
  SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:+$SPARK_SUBMIT_OPTS }-XX:ArchiveClassesAtExit=$PARTIAL -Xlog:cds=off" \
    "$SUBMIT" "${ARGS[@]}" "${EXTRA[@]}" "$SCRIPT" "$@" && [ -s "$PARTIAL" ] && mv "$PARTIAL" "$CDS"
  RC=$?
  rm -f "$PARTIAL"
  exit $RC
fi
if [ -f "$CDS" ] && [ "${GENRECLF_SPARK_CDS:-}" != off ]; then
  export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:+$SPARK_SUBMIT_OPTS }-XX:SharedArchiveFile=$CDS -Xlog:cds=off -Xlog:cds+dynamic=off"
fi
# The Python driver is this process (its exit code is the job's) and starts Spark's JVM itself, with
# these arguments, when it first needs it (genreclf/io/spark.py): refusals come before any JVM, and
# Ctrl-C or SIGTERM reach the driver alone, which stops Spark, releases its lock and says so.
printf -v PYSPARK_SUBMIT_ARGS '%q ' "${ARGS[@]}" "${EXTRA[@]}"
export PYSPARK_SUBMIT_ARGS="${PYSPARK_SUBMIT_ARGS}pyspark-shell"
exec env PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m "jobs.$JOB" "$@"
