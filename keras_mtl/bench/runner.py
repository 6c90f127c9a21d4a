"""Training loop, STL cache and result aggregation of `keras-mtl bench`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import time

import keras
import numpy as np

from keras_mtl import balancers as balancer_registry
from keras_mtl._validation import check_number, check_positive_int, invalid_value
from keras_mtl.bench import report
from keras_mtl.bench.architectures import ARCHITECTURES, build_model
from keras_mtl.bench.problems import LOADERS, Problem, load_problem
from keras_mtl.bench.scores import score

# 2: the key holds a fingerprint of the data (`data_fingerprint`).
CACHE_VERSION = 2
# A job's progress line waits this long after its previous one.
PROGRESS_SECONDS = 10.0


@dataclasses.dataclass
class BenchConfig:
    """What `keras-mtl bench` runs.

    Attributes:
        dataset: a name from `keras_mtl.bench.problems.LOADERS`.
        archs: architectures (`"shared_bottom"`, `"mmoe"`).
        balancers: balancer names.
        seeds: number of seeds (0, 1, ...).
        epochs: training epochs.
        batch_size: batch size.
        learning_rate: Adam learning rate.
        data_dir: data folder (default `$KERAS_MTL_DATA_DIR`).
        out_dir: where results.json, results.csv and pareto.png go.
        cache_dir: where STL baselines are cached.
        max_train: cap on training examples (random subset), `None` for all.
        max_eval: cap on validation/test examples.
        stl: whether to train single-task baselines and report Δm.

    Example:

    >>> from keras_mtl.bench.runner import BenchConfig
    >>> config = BenchConfig(dataset="synthetic", balancers=("ew", "mgda"), epochs=2)
    >>> config.validate() is None, config.archs, config.seeds
    (True, ('mmoe',), 1)
    >>> BenchConfig(batch_size=0).validate()
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `batch_size`, expected a positive integer. Received: batch_size=0
    """

    dataset: str = "census_income"
    archs: tuple = ("mmoe",)
    balancers: tuple = ("ew",)
    seeds: int = 1
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    data_dir: str | None = None
    out_dir: str = "bench_out"
    cache_dir: str | None = None
    max_train: int | None = None
    max_eval: int | None = None
    stl: bool = True

    def validate(self) -> None:
        """Raises `ValueError` naming the first invalid field.

        Raises:
            ValueError: for an unknown dataset, architecture or balancer, an
                architecture or balancer named twice, a non-positive `seeds`,
                `epochs`, `batch_size`, `max_train` or `max_eval`, or a
                `learning_rate` that is not positive.
        """
        if self.dataset not in LOADERS:
            raise ValueError(
                f"Unknown dataset {self.dataset!r}; expected one of {sorted(LOADERS)}. "
                f"Received: dataset={self.dataset!r}"
            )
        bad = [a for a in self.archs if a not in ARCHITECTURES]
        if bad or not self.archs:
            raise ValueError(
                f"Unknown architectures {bad}; expected names from "
                f"{list(ARCHITECTURES)}. Received: arch={list(self.archs)}"
            )
        known = balancer_registry.available()
        bad = [b for b in self.balancers if b not in known]
        if bad or not self.balancers:
            raise ValueError(
                f"Unknown balancers {bad}; expected names from {known}. "
                f"Received: balancers={list(self.balancers)}"
            )
        for name in ("archs", "balancers"):
            names = list(getattr(self, name))
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                # Run twice, a name would be reported as one row with twice the seeds.
                raise invalid_value(name, names, f"each name once ({twice} given more than once)")
        for name in ("seeds", "epochs", "batch_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_train", "max_eval"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        check_number(
            "learning_rate", self.learning_rate, "a positive finite number", lambda v: v <= 0
        )


class _EpochClock(keras.callbacks.Callback):
    """Epoch wall times, and the weights of the epoch with the lowest summed validation loss.

    With `progress`, a line per epoch goes to it once `PROGRESS_SECONDS`
    have passed since the job's last line: long jobs show they advance,
    short ones stay one line.
    """

    def __init__(self, val, tasks, batch_size, progress=None):
        super().__init__()
        self.val, self.tasks, self.batch_size = val, tasks, batch_size
        self.progress = progress
        self.times: list[float] = []
        self.best = (np.inf, None)
        self._last_line = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.times.append(now - self._start)
        if self.progress is not None and now - self._last_line >= PROGRESS_SECONDS:
            self._last_line = now
            self.progress(
                f"epoch {epoch + 1}/{self.params['epochs']}: loss {logs['loss']:.4f} "
                f"({self.times[-1]:.0f} s)"
            )
        if self.val is None:
            return
        result = self.model.evaluate(
            self.val[0], self.val[1], batch_size=4 * self.batch_size, verbose=0, return_dict=True
        )
        # Summed task losses: the same selection rule whatever the balancer's weights.
        total = sum(result[f"{t}_loss"] for t in self.tasks)
        if total < self.best[0]:
            self.best = (total, self.model.get_weights())


def train_one(
    problem: Problem,
    arch: str,
    balancer: str,
    seed: int,
    config: BenchConfig,
    tasks=None,
    progress=None,
) -> dict:
    """Trains one model and scores it on the test split.

    Args:
        problem: the loaded problem.
        arch: architecture name.
        balancer: balancer name.
        seed: seed of the initial weights and data order.
        config: the bench configuration (epochs, batch size, learning rate).
        tasks: tasks to train (all by default; one for an STL baseline).
        progress: optional callable taking a line of text, called at the
            end of an epoch when `PROGRESS_SECONDS` have passed since the
            last line (the training loss and the epoch's time).

    Returns:
        A dict with `metrics` `{task: value}` and `epoch_seconds` (median,
        the first epoch left out when there are several).

    Example:

    One training step at a negligible learning rate: the biases stay at
    zero, so the model maps the zero input to 0 and the test MSE is the
    square of each label (2 and -1):

    >>> import numpy as np
    >>> from keras_mtl.bench.problems import Problem, TaskSpec
    >>> from keras_mtl.bench.runner import BenchConfig, train_one
    >>> spec = TaskSpec(1, None, "mse", "mse", False)
    >>> x = np.zeros((8, 3), "float32")
    >>> y = {"a": np.full((8, 1), 2.0, "float32"), "b": np.full((8, 1), -1.0, "float32")}
    >>> problem = Problem("toy", {"a": spec, "b": spec}, (x, y), None, (x, y), "mlp")
    >>> config = BenchConfig(epochs=1, batch_size=8, learning_rate=1e-12)
    >>> result = train_one(problem, "shared_bottom", "ew", seed=0, config=config)
    >>> result["metrics"], result["epoch_seconds"] > 0
    ({'a': 4.0, 'b': 1.0}, True)
    """
    tasks = list(tasks or problem.tasks)
    keras.utils.set_random_seed(seed)
    model = build_model(problem, arch, tasks)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss={t: problem.tasks[t].loss for t in tasks},
        balancer=balancer,
    )

    def select(split):
        return None if split is None else (split[0], {t: split[1][t] for t in tasks})

    train, val, test = select(problem.train), select(problem.val), select(problem.test)
    clock = _EpochClock(val, tasks, config.batch_size, progress)
    model.fit(
        train[0],
        train[1],
        batch_size=config.batch_size,
        epochs=config.epochs,
        verbose=0,
        callbacks=[clock],
    )
    if clock.best[1] is not None:
        model.set_weights(clock.best[1])
    predictions = model.predict(test[0], batch_size=4 * config.batch_size, verbose=0)
    metrics = {t: score(problem.tasks[t].metric, test[1][t], predictions[t]) for t in tasks}
    steady = clock.times[1:] if len(clock.times) > 1 else clock.times
    return {"metrics": metrics, "epoch_seconds": statistics.median(steady)}


def data_fingerprint(problem: Problem) -> str:
    """A hash of every array of `problem`'s splits: shapes, dtypes and bytes.

    Part of the STL cache key: a baseline trained on other data (another
    `data_dir`, a changed file, another loader version) is not reused. It
    reads each array once (about a second for the 600 MB of Census-Income).

    Args:
        problem: the loaded problem (after any `max_train` / `max_eval`
            subsampling).

    Returns:
        32 hexadecimal digits.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.bench.problems import Problem, TaskSpec
    >>> from keras_mtl.bench.runner import data_fingerprint
    >>> spec = TaskSpec(1, None, "mse", "mse", False)
    >>> x, y = np.zeros((4, 2), "float32"), {"a": np.ones((4, 1), "float32")}
    >>> one = data_fingerprint(Problem("toy", {"a": spec}, (x, y), None, (x, y), "mlp"))
    >>> other = data_fingerprint(Problem("toy", {"a": spec}, (x + 1, y), None, (x, y), "mlp"))
    >>> len(one), one == other
    (32, False)
    """
    digest = hashlib.blake2b(digest_size=16)

    def add(value):
        if isinstance(value, dict):
            for key in sorted(value):
                digest.update(f"<{key}>".encode())
                add(value[key])
            return
        array = np.ascontiguousarray(value)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.reshape(-1).view("uint8") if array.size else b"")

    for name, split in (("train", problem.train), ("val", problem.val), ("test", problem.test)):
        digest.update(f"[{name}]".encode())
        if split is not None:
            add({"x": split[0], "y": split[1]})
    return digest.hexdigest()


def _stl_key(config: BenchConfig, arch: str, task: str, seed: int, fingerprint: str) -> str:
    fields = {
        "v": CACHE_VERSION,
        "data": fingerprint,
        "dataset": config.dataset,
        "arch": arch,
        "task": task,
        "seed": seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.learning_rate,
        "max_train": config.max_train,
        "max_eval": config.max_eval,
    }
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _cache_dir(config: BenchConfig) -> str:
    if config.cache_dir:
        return config.cache_dir
    return os.path.join(
        os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "keras_mtl", "bench_cache"
    )


def run_bench(config: BenchConfig, print_fn=print) -> dict:
    """Runs every architecture x balancer x seed and the STL baselines, then reports.

    Args:
        config: what to run.
        print_fn: where progress and the table go.

    A job that diverges (a non-finite loss or update) is recorded as a
    failed run with NaN metrics and its error, and the bench goes on.
    results.json and results.csv are rewritten after every job, so that an
    interruption keeps the finished runs; NaN is written to results.json as
    `null` (strict JSON; `report.read_results` reads it back as NaN). STL
    baselines are cached in `config.cache_dir`, keyed by the configuration
    and a fingerprint of the data (`data_fingerprint`); a damaged cache
    file is reported and retrained.

    Returns:
        The results dict also written to `results.json`.

    Raises:
        ValueError: for an invalid configuration, including an `out_dir` or
            `cache_dir` that is not a writable folder (checked before any
            data is loaded).
        FileNotFoundError: when the dataset's files are missing.
        OSError: when the result files cannot be written (the table is
            printed first).

    Example:

    The configuration is checked before any data is loaded; a tiny full run
    is `run_bench(BenchConfig(dataset="synthetic", epochs=1, max_train=512,
    stl=False))`, and `keras-mtl bench --quick` runs one from the shell.

    >>> from keras_mtl.bench import BenchConfig, run_bench
    >>> run_bench(BenchConfig(dataset="synthetic", archs=("cnn",)))
    Traceback (most recent call last):
    ...
    ValueError: Unknown architectures ['cnn']; expected names from ['shared_bottom', 'mmoe']. Received: arch=['cnn']
    """
    config.validate()
    # Before any data is loaded or model trained: a bad folder would
    # otherwise only show once the results are ready to be written.
    out_dir = _writable_dir("out_dir", config.out_dir)
    cache = _writable_dir("cache_dir", _cache_dir(config))
    problem = load_problem(config.dataset, config.data_dir, config.max_train, config.max_eval)
    tasks = list(problem.tasks)
    print_fn(
        f"{config.dataset}: {len(problem.train[0])} train / "
        f"{0 if problem.val is None else len(problem.val[0])} val / {len(problem.test[0])} test, "
        f"tasks {tasks}, {config.epochs} epochs, {config.seeds} seed(s)"
    )
    stl_jobs = [
        (a, t, s) for a in config.archs for t in tasks for s in range(config.seeds) if config.stl
    ]
    jobs = [(a, b, s) for a in config.archs for b in config.balancers for s in range(config.seeds)]
    total, done = len(stl_jobs) + len(jobs), 0
    start = time.perf_counter()
    failures = _training_errors()

    def progress(line):
        print_fn(f"    {line}")

    stl: dict = {}
    fingerprint = data_fingerprint(problem) if stl_jobs else ""
    for arch, task, seed in stl_jobs:
        done += 1
        path = os.path.join(cache, f"stl_{_stl_key(config, arch, task, seed, fingerprint)}.json")
        value = _read_cached(path, print_fn) if os.path.exists(path) else None
        source = "cached"
        if value is None:
            try:
                value = train_one(problem, arch, "ew", seed, config, [task], progress)
                value = value["metrics"][task]
            except failures as error:
                # Not cached: the next bench tries again.
                value, source = math.nan, f"failed: {_message(error)}"
            else:
                # Whole or not at all: a truncated file would be read by every later bench.
                # Strict JSON: an undefined score (NaN) is written as null.
                report.replace_file(path, report.to_json(value))
                source = "trained"
        stl[(arch, task, seed)] = value
        print_fn(
            f"[{done}/{total}] STL {arch} {task} seed {seed}: "
            f"{problem.tasks[task].metric}={value:.4f} ({source}, "
            f"{time.perf_counter() - start:.0f} s elapsed)"
        )
    runs = []
    for arch, balancer, seed in jobs:
        done += 1
        try:
            result = train_one(problem, arch, balancer, seed, config, progress=progress)
        except failures as error:
            # One diverging balancer must not cost the runs of the others.
            message = _message(error)
            result = {"metrics": dict.fromkeys(tasks, math.nan), "epoch_seconds": math.nan}
            result["error"] = message
            shown = f"failed: {message}"
        else:
            shown = ", ".join(f"{t}={v:.4f}" for t, v in result["metrics"].items())
        runs.append({"arch": arch, "balancer": balancer, "seed": seed, **result})
        print_fn(
            f"[{done}/{total}] {arch} {balancer} seed {seed}: {shown} "
            f"({time.perf_counter() - start:.0f} s elapsed)"
        )
        # Rewritten after every run: an interruption keeps the finished ones.
        report.write(report.summarize(problem, config, runs, stl), out_dir, plot=False)
    results = report.summarize(problem, config, runs, stl)
    # The table first: it survives a failure to write the files.
    print_fn(report.table(results))
    written = report.write(results, out_dir)
    print_fn(f"Wrote {', '.join(os.path.join(out_dir, name) for name in written)}")
    return results


def _writable_dir(name: str, path: str) -> str:
    """Creates folder `path` if needed and checks that files can be written in it.

    Args:
        name: the `BenchConfig` field, for the message.
        path: the folder.

    Returns:
        `path`, a leading `~` expanded to the home folder.

    Raises:
        ValueError: naming the field and the value when `path` is a file or
            cannot be created or written to.
    """
    path = os.path.expanduser(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise invalid_value(name, path, "a writable directory, not a file")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise invalid_value(name, path, f"a writable directory ({error.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise invalid_value(name, path, "a writable directory (permission denied)")
    return path


def _read_cached(path: str, print_fn) -> float | None:
    """The cached STL score in `path`, or `None` (with a warning) when the file is unreadable.

    `null` is an undefined score (NaN), as `report.to_json` writes it.
    """
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as error:
        # ValueError: a truncated or otherwise damaged file (JSONDecodeError, bad UTF-8).
        print_fn(f"Warning: ignoring the unreadable STL cache file {path} ({error}); retraining.")
        return None
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        print_fn(
            f"Warning: ignoring the STL cache file {path}: expected a number, "
            f"received {value!r}; retraining."
        )
        return None
    return float(value)


def _training_errors() -> tuple:
    """The exceptions of a training job that diverges (non-finite loss or update).

    They are recorded as a failed run; any other exception, and
    `KeyboardInterrupt`, still stops the bench.
    """
    errors = (ArithmeticError, ValueError)
    if keras.config.backend() == "tensorflow":
        # The checks of a non-finite step are graph assertions.
        import tensorflow as tf

        errors += (tf.errors.InvalidArgumentError,)
    return errors


def _message(error: BaseException) -> str:
    """A one-line reason for a failed job."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # TensorFlow's message opens with where the op was defined; the reason is
    # the text of the failed assertion.
    for line in lines:
        if line.startswith("assertion failed: ["):
            # "assertion failed: [text] [values]" -> "text [values]"
            return line[len("assertion failed: [") :].replace("] [", " [", 1)
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
