"""How a score task runs the model: windows of several tracks per call, decoding ahead in threads,
the precision chosen and cast at load. Real TensorFlow, no Spark."""

import threading
import time

import numpy as np
import pytest

from genreclf.config import POLICIES
from genreclf.ml.inference import TrackBatcher, cast_model, prefetch, resolve

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure


@pytest.fixture(scope="module")
def small_model():
    """The reference architecture on a small input (16 frames x 33 bins), seeded weights."""
    import keras

    from genreclf.ml.network import build_model
    from genreclf.ml.tfsetup import configure_tensorflow

    configure_tensorflow(training=False, threads=1)
    keras.utils.set_random_seed(3)
    return build_model((16, 33, 1), 5, "float16")


def test_cross_track_batches_give_the_per_track_predictions(small_model):
    """Tracks of 3, 19, 1, 40 and 7 windows through batches of 16: every track's window predictions
    equal predicting that track alone (fp32, within 1e-6), and tracks come back in order."""
    rng = np.random.default_rng(0)
    tracks = {f"t{i}": rng.random((n, 16, 33)).astype(np.float16) for i, n in enumerate((3, 19, 1, 40, 7))}
    batcher = TrackBatcher(small_model, 16)
    done = []
    for key, windows in tracks.items():
        done += batcher.add(key, windows)
        assert batcher._waiting < 16  # bounded: less than one batch waits between calls
    done += batcher.flush()
    assert [k for k, _ in done] == list(tracks)
    for key, preds in done:
        alone = small_model.predict_on_batch(tracks[key].astype(np.float32)[..., None])
        assert preds.shape == alone.shape
        np.testing.assert_allclose(preds, alone, atol=1e-6)


def test_batches_are_full_until_the_last(small_model):
    """Model calls see batch_size windows each (whatever the track lengths), then one remainder."""
    sizes = []

    class Spy:
        output_shape = small_model.output_shape

        def predict_on_batch(self, x):
            sizes.append(len(x))
            return small_model.predict_on_batch(x)

    batcher = TrackBatcher(Spy(), 8)
    for n in (5, 5, 5, 2):
        batcher.add(n, np.zeros((n, 16, 33), np.float16))
    batcher.flush()
    assert sizes == [8, 8, 1]


def test_prefetch_keeps_order_runs_ahead_and_bounds_what_waits():
    """Results come in input order; with 2 threads the next 2 items are being computed while the
    consumer holds the first (work overlaps it), and no further one is started before it asks
    (at most threads + 1 wait: the memory bound)."""
    started, release = [], threading.Event()
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i and not release.wait(30):  # items after the first wait until the consumer has looked
            raise TimeoutError(i)
        return i * i

    gen = prefetch(range(10), work, threads=2)
    first = next(gen)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(started) < 3:
        time.sleep(0.001)
    with lock:
        ahead = sorted(started)
    assert first == (0, 0) and ahead == [0, 1, 2]  # 1 and 2 run while the consumer holds 0; 3 is not submitted
    release.set()
    assert list(gen) == [(i, i * i) for i in range(1, 10)]
    assert list(prefetch(range(3), work, threads=0)) == [(0, 0), (1, 1), (2, 4)]


def test_prefetch_passes_errors_to_the_consumer():
    def work(i):
        if i == 2:
            raise ValueError("bad file")
        return i

    with pytest.raises(ValueError, match="bad file"):
        list(prefetch(range(5), work, threads=2))


@pytest.mark.parametrize("flags, native", [("avx512_bf16 avx2", True), ("amx_bf16,amx_tile", True),
                                           ("avx2 fma", False), ("none", False), ("", False)])
def test_auto_precision_follows_the_cpu_flags_given(monkeypatch, flags, native):
    """GENRECLF_CPU_FLAGS replaces /proc/cpuinfo's flags: each answer is tested on every host."""
    from genreclf.ml.inference import CPU_FLAGS_ENV, cpu_has_bf16, prepare_process

    monkeypatch.setenv(CPU_FLAGS_ENV, flags)
    assert cpu_has_bf16() is native
    assert resolve("auto", has_gpu=False) == ("bfloat16" if native else "float32")
    assert prepare_process("auto") is native  # oneDNN for bfloat16 on the CPU
    assert prepare_process("float32") is False and prepare_process("bfloat16") is True
    assert prepare_process("float32", "musicnn") is True  # and for the pretrained backbones' float32
    # Native bfloat16 on a CPU needs oneDNN's kernels too: without them, auto computes float32.
    assert resolve("auto", has_gpu=False, cpu_bf16=False) == "float32"
    # GPUs decide by compute capability, whatever the CPU.
    assert resolve("auto", has_gpu=True) == "bfloat16"
    assert resolve("auto", has_gpu=True, gpu_capability=(9, 0)) == "bfloat16"  # H100
    assert resolve("auto", has_gpu=True, gpu_capability=(7, 5)) == "float16"  # T4: no bfloat16 units
    assert resolve("float16", has_gpu=False) == "float32"  # an executor without a GPU falls back
    assert resolve("float32", has_gpu=True) == "float32"
    # Training, by the same resolver: float32 on every CPU (a bf16 step measured slower even with
    # AMX), the GPU's native 16-bit type by compute capability.
    assert resolve("auto", has_gpu=False, training=True) == "float32"
    assert resolve("auto", has_gpu=True, gpu_capability=(8, 0), training=True) == "bfloat16"  # A100
    assert resolve("auto", has_gpu=True, gpu_capability=(7, 0), training=True) == "float16"  # V100


def test_cpu_flags_are_read_from_the_host_unless_forced(monkeypatch):
    from genreclf.ml.inference import CPU_FLAGS_ENV, cpu_flags

    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        lines = []
    expected = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    assert cpu_flags() == expected
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx512_bf16, sse2")
    assert cpu_flags() == {"avx512_bf16", "sse2"}


def test_cast_keeps_weights_input_and_softmax_in_their_dtypes(small_model):
    cast = cast_model(small_model, "bfloat16")
    policies = [layer.dtype_policy.name for layer in cast.layers]
    assert policies[0] == small_model.layers[0].dtype_policy.name  # the input: the stored feature dtype
    assert policies[-1] == "float32" and set(policies[1:-1]) == {POLICIES["bfloat16"]}
    assert all(w.dtype == "float32" for w in cast.weights)
    for a, b in zip(small_model.get_weights(), cast.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert cast_model(small_model, "float32") is small_model


def test_cast_reaches_the_layers_of_nested_backbones():
    """A head's bundle nests each backbone as a model (genreclf.ml.backbones): their layers compute in
    bfloat16 too, the head's softmax stays float32."""
    import keras

    inp = keras.Input((8, 6, 1))
    backbone = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp)), name="backbone")
    outer_in = keras.Input((8, 6, 1))
    model = keras.Model(outer_in, keras.layers.Dense(3, activation="softmax", name="genre")(backbone(outer_in)))
    cast = cast_model(model, "bfloat16")
    inner = [layer.dtype_policy.name for layer in cast.get_layer("backbone").layers[1:]]
    assert set(inner) == {POLICIES["bfloat16"]} and cast.get_layer("genre").dtype_policy.name == "float32"
    x = np.random.default_rng(0).random((2, 8, 6, 1)).astype("float32")
    np.testing.assert_allclose(cast.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.02)


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflows_native_start_up_lines_reach_the_console_only_when_verbose(verbose):
    """absl's "All log messages before absl::InitializeLog()" and oneDNN's notice, printed by every
    worker whatever TF_CPP_MIN_LOG_LEVEL says, are debug logs unless --verbose (GENRECLF_VERBOSE=1)."""
    import subprocess
    import sys

    from tests import hostenv

    env = hostenv.launch_env(TF_ENABLE_ONEDNN_OPTS="1", GENRECLF_VERBOSE="1" if verbose else "0")
    code = "from genreclf.ml.tfsetup import configure_tensorflow; configure_tensorflow(training=False, onednn=True)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert ("oneDNN custom operations" in res.stderr) is verbose, res.stderr
