"""Synthetic sensor data for a fleet of industrial machines (motors / pumps).

Each edge device watches one machine and logs one reading per minute of
``vibration_rms`` (mm/s), ``temperature_c`` (case temperature), ``current_a``
and ``rpm``. The physics is deliberately simple, but every label is caused by
the simulated state rather than painted onto the features:

* Operating point per machine: nominal speed 1200..3000 rpm, a base load
  (fraction of rated) that drifts as an AR(1) process, and an ambient
  temperature with a +-3 degC daily cycle.
* Current = no-load current + load-proportional part. Speed sags slightly with
  load (induction-motor slip). Vibration scales with speed and load
  (ISO 10816 scale: a healthy machine stays below ~3 mm/s).
* Temperature is a first-order thermal model: it relaxes towards an
  equilibrium ``ambient + iron losses + k * I^2`` with a 10 min time constant,
  so ``next_temperature_c`` (the following reading) is close to linear in the
  current temperature, current, load and ambient, plus sensor noise.
* Faults arrive as episodes (geometric lengths, mean 25 min) of one type with
  a random severity: 1 bearing wear (vibration up, friction heat),
  2 overheating / cooling failure (equilibrium temperature up, current up a
  little), 3 electrical (current up, speed drops, some 2x-line vibration).
  Thermal lag, severity spread, noise and the machine-to-machine spread make
  the classes overlap, so a linear model learns them well but not perfectly.
* Each sensor has its own calibration (gain / offset), as real fleets do.
* Optionally ``spare_sensors`` extra channels ``spare_00``, ``spare_01``, ...
  (``FleetSpec.spare_sensors``): unconnected inputs that read a per-device
  offset plus noise, uninformative for every label. They make the model wider
  (d = 4 + K features) for measuring a fleet at a realistic model size without
  changing the four real channels (drawn from their own random stream).

Non-IID (default) means each device is its own machine: own operating point,
calibration, fault rate (Beta-distributed, so some devices hardly ever fault),
skewed fault-type mix (Dirichlet) and sample count (lognormal, at least 50).
In IID mode the same machines are simulated with equal counts, pooled, shuffled
and dealt out evenly, so every device holds an exchangeable sample of one
distribution; its rows are then not a time series and timestamps may repeat.

Rows are split into train/test at random per device (not chronologically) so a
device's test set has the same label mix as its train set.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmq.runtime.files import write_atomic

FEATURES: tuple[str, ...] = ("vibration_rms", "temperature_c", "current_a", "rpm")
LABELS: tuple[str, ...] = ("fault", "fault_type", "next_temperature_c")
COLUMNS: tuple[str, ...] = ("timestamp", *FEATURES, *LABELS)
FAULT_TYPES: tuple[str, ...] = ("normal", "bearing_wear", "overheating", "electrical")

# Datasheet-style operating point and spread: a FIXED standardisation shared by
# every device, so no device has to reveal statistics of its private data.
SENSOR_NOMINAL: dict[str, tuple[float, float]] = {
    "vibration_rms": (1.8, 1.0),
    "temperature_c": (53.0, 10.0),
    "current_a": (12.0, 2.5),
    "rpm": (2050.0, 500.0),
}
SPARE_NOMINAL = (0.0, 1.0)  # datasheet center/scale of every spare channel
MAX_SPARE_SENSORS = 1000

MIN_SAMPLES = 50
START_UNIX = 1_704_067_200  # 2024-01-01T00:00:00Z
READING_PERIOD_S = 60
_INT_COLUMNS = frozenset({"timestamp", "fault", "fault_type"})

_TAU_MIN = 10.0  # thermal time constant of a small motor's case, in readings
_EPISODE_MEAN = 25.0  # mean fault-episode length, in readings
_COUNT_SIGMA = 0.5  # lognormal spread of non-IID sample counts


@dataclass(frozen=True)
class FleetSpec:
    """What fleet to simulate; ``samples_per_device`` is a mean in non-IID mode."""

    n_devices: int
    samples_per_device: int = 400
    iid: bool = False
    test_fraction: float = 0.2
    seed: int = 0
    spare_sensors: int = 0  # extra uninformative channels spare_00.. (see the module doc)

    def __post_init__(self) -> None:
        # One exception type (ValueError, even for wrong types) so a caller loading a
        # spec from a config file has a single thing to catch.
        for name in ("n_devices", "samples_per_device", "seed", "spare_sensors"):
            value = getattr(self, name)
            # bool is an int subclass; n_devices=True is surely a caller bug
            is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
            if not is_int:
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {self.n_devices}")
        if self.samples_per_device < MIN_SAMPLES:
            raise ValueError(
                f"samples_per_device must be >= {MIN_SAMPLES}, got {self.samples_per_device}"
            )
        is_bool = isinstance(self.iid, bool | np.bool_)
        if not is_bool:
            raise ValueError(f"iid must be a bool, got {self.iid!r}")
        is_real = isinstance(self.test_fraction, float | int | np.floating | np.integer)
        if not is_real or not 0.0 <= float(self.test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.spare_sensors <= MAX_SPARE_SENSORS:
            raise ValueError(f"spare_sensors must be in [0, {MAX_SPARE_SENSORS}], "
                             f"got {self.spare_sensors}")

    @property
    def features(self) -> tuple[str, ...]:
        return features(self.spare_sensors)

    @property
    def columns(self) -> tuple[str, ...]:
        return columns(self.spare_sensors)


def spare_names(k: int) -> tuple[str, ...]:
    """``spare_00``, ``spare_01``, ... (three digits from 100 on, so names sort)."""
    width = max(2, len(str(k - 1)))
    return tuple(f"spare_{i:0{width}d}" for i in range(k))


def features(spare_sensors: int = 0) -> tuple[str, ...]:
    """FEATURES, then the spare channels."""
    return (*FEATURES, *spare_names(spare_sensors))


def columns(spare_sensors: int = 0) -> tuple[str, ...]:
    """The CSV columns: COLUMNS with the spare channels after the real sensors."""
    return ("timestamp", *features(spare_sensors), *LABELS)


def nominal(feature: str) -> tuple[float, float]:
    """Datasheet center/scale of ``feature`` (a real sensor or a spare channel)."""
    return SENSOR_NOMINAL.get(feature, SPARE_NOMINAL)


@dataclass(frozen=True)
class DeviceData:
    """One device's private data; ``train``/``test`` are float64 rows x ``columns``."""

    device_id: str
    columns: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class _Machine:
    rpm0: float
    base_load: float
    ambient: float
    vib_base: float
    fault_rate: float
    type_probs: np.ndarray
    calibration: np.ndarray  # vib gain, temp offset, current gain, rpm offset


def _draw_machine(rng: np.random.Generator) -> _Machine:
    # Beta(0.9, 2.1): mean fault rate 0.3, but many near-healthy machines and a few bad ones
    fault_rate = float(np.clip(rng.beta(0.9, 2.1), 0.005, 0.85))
    return _Machine(
        rpm0=rng.uniform(1200.0, 3000.0),
        base_load=rng.uniform(0.45, 0.8),
        ambient=rng.uniform(20.0, 30.0),
        vib_base=rng.uniform(0.8, 1.6),
        fault_rate=fault_rate,
        type_probs=rng.dirichlet(np.full(3, 0.8)),
        calibration=np.array(
            [
                rng.lognormal(0.0, 0.06),
                rng.normal(0.0, 1.0),
                rng.normal(1.0, 0.03),
                rng.normal(0.0, 5.0),
            ]
        ),
    )


def _fault_episodes(rng: np.random.Generator, n: int, m: _Machine) -> tuple[np.ndarray, np.ndarray]:
    """Alternate healthy gaps and fault episodes; return per-reading type and severity."""
    gap_mean = _EPISODE_MEAN * (1.0 - m.fault_rate) / m.fault_rate
    ftype = np.zeros(n, dtype=np.int64)
    severity = np.zeros(n)
    t = 0
    faulty = rng.random() < m.fault_rate  # start in the stationary mix
    while t < n:
        length = int(rng.geometric(1.0 / (_EPISODE_MEAN if faulty else max(gap_mean, 1.0))))
        if faulty:
            ftype[t : t + length] = 1 + rng.choice(3, p=m.type_probs)
            severity[t : t + length] = rng.uniform(0.5, 1.5)
        t += length
        faulty = not faulty
    return ftype, severity


def _lowpass(x: np.ndarray, keep: float, start: float) -> np.ndarray:
    """y[t] = keep * y[t-1] + (1 - keep) * x[t-1]; y[0] = start (first-order lag)."""
    y = np.empty_like(x)
    prev, xs = start, x.tolist()
    for i in range(len(xs)):
        y[i] = prev
        prev = keep * prev + (1.0 - keep) * xs[i]
    return y


def _simulate(rng: np.random.Generator, n: int, m: _Machine) -> np.ndarray:
    """n readings of one machine as rows x COLUMNS (simulates n+1 for next_temperature_c)."""
    steps = n + 1
    t = np.arange(steps, dtype=np.float64)
    load_noise = _lowpass(rng.normal(0.0, 0.6, steps), 0.95, 0.0)  # AR(1), std ~0.1
    load = np.clip(m.base_load + load_noise, 0.1, 1.0)
    ambient = m.ambient + 3.0 * np.sin(2 * np.pi * t / 1440.0 + rng.uniform(0, 2 * np.pi))
    ftype, sev = _fault_episodes(rng, steps, m)
    bearing, overheat, electric = (np.where(ftype == k, sev, 0.0) for k in (1, 2, 3))

    current = 3.0 + 13.0 * load + 1.0 * overheat + 5.0 * electric
    rpm = m.rpm0 * (1.0 - 0.04 * load) * (1.0 - 0.03 * electric)
    vibration = m.vib_base * (rpm / 1800.0) * (0.8 + 0.4 * load) + 2.8 * bearing + 1.0 * electric
    # copper losses ~ I^2; bearing friction and blocked cooling add heat
    t_eq = ambient + 8.0 + 0.12 * current**2 + 6.0 * bearing + 26.0 * overheat
    t_eq += rng.normal(0.0, 1.5, steps)  # airflow / coolant fluctuations
    temp = _lowpass(t_eq, float(np.exp(-1.0 / _TAU_MIN)), float(t_eq[0]))

    vib_gain, temp_off, cur_gain, rpm_off = m.calibration
    meas_vib = vib_gain * vibration * rng.lognormal(0.0, 0.12, steps)
    meas_temp = temp + temp_off + rng.normal(0.0, 0.4, steps)
    meas_cur = cur_gain * current + rng.normal(0.0, 0.4, steps)
    meas_rpm = rpm + rpm_off + rng.normal(0.0, 6.0, steps)

    stamps = START_UNIX + READING_PERIOD_S * np.arange(n)
    features = (meas_vib[:n], meas_temp[:n], meas_cur[:n], meas_rpm[:n])  # FEATURES order
    labels = (ftype[:n] > 0, ftype[:n], meas_temp[1:])  # LABELS order
    return np.column_stack((stamps, *features, *labels)).astype(np.float64)


def _split(
    rng: np.random.Generator, rows: np.ndarray, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    n = len(rows)
    n_test = min(round(n * test_fraction), n - 1)
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.choice(n, size=n_test, replace=False)] = True
    # keep each part in time order so it still reads like a device log
    train, test = rows[~is_test], rows[is_test]
    return (
        train[np.argsort(train[:, 0], kind="stable")],
        test[np.argsort(test[:, 0], kind="stable")],
    )


def _with_spares(rng: np.random.Generator, rows: np.ndarray, k: int) -> np.ndarray:
    """``rows`` with k spare channels after the real sensors: a per-device offset plus
    noise, rounded to a sensor's resolution (keeps the CSVs short)."""
    offset = rng.normal(0.0, 0.5, k)
    spares = np.round(offset + rng.normal(0.0, 0.8, (len(rows), k)), 3)
    cut = 1 + len(FEATURES)
    return np.column_stack((rows[:, :cut], spares, rows[:, cut:]))


def generate_fleet(spec: FleetSpec) -> list[DeviceData]:
    """Simulate the fleet; the result depends only on ``spec`` (deterministic per seed)."""
    root = np.random.SeedSequence(spec.seed)
    # spawn(3) first: the same streams as before spare channels existed, so the real
    # columns do not depend on spare_sensors; the spares get a fourth stream.
    machine_ss, split_ss, deal_ss = root.spawn(3)
    [spare_ss] = root.spawn(1)
    machine_rngs = [np.random.default_rng(s) for s in machine_ss.spawn(spec.n_devices)]
    split_rngs = [np.random.default_rng(s) for s in split_ss.spawn(spec.n_devices)]

    if spec.iid:
        counts = [spec.samples_per_device] * spec.n_devices
    else:
        count_rng = np.random.default_rng(deal_ss)
        mu = np.log(spec.samples_per_device) - _COUNT_SIGMA**2 / 2  # keeps the mean on target
        draws = count_rng.lognormal(mu, _COUNT_SIGMA, spec.n_devices)
        counts = [max(MIN_SAMPLES, round(float(c))) for c in draws]

    per_machine = [
        _simulate(r, c, _draw_machine(r)) for r, c in zip(machine_rngs, counts, strict=True)
    ]
    if spec.iid:
        pool = np.concatenate(per_machine)
        order = np.random.default_rng(deal_ss).permutation(len(pool))
        per_machine = np.array_split(pool[order], spec.n_devices)

    spare_rngs = [np.random.default_rng(s) for s in spare_ss.spawn(spec.n_devices)]
    devices = []
    for i, (rows, rng) in enumerate(zip(per_machine, split_rngs, strict=True)):
        if spec.spare_sensors:  # one device at a time: the wide rows are most of the memory
            rows = _with_spares(spare_rngs[i], rows, spec.spare_sensors)
        train, test = _split(rng, rows, spec.test_fraction)
        devices.append(DeviceData(f"dev-{i:03d}", spec.columns, train, test))
    return devices


def write_csv(path: str | os.PathLike[str], columns: Sequence[str], rows: np.ndarray) -> None:
    """Write a header line and numeric rows atomically (``runtime.files.write_atomic``)."""
    data = np.asarray(rows, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(columns):
        raise ValueError(f"rows must be 2-D with {len(columns)} columns, got {data.shape}")
    if any("," in c or "\n" in c for c in columns):
        raise ValueError(f"column names may not contain ',' or newlines: {columns}")
    is_int = [c in _INT_COLUMNS for c in columns]
    if is_int and data.size:
        data = data.copy()
        # round, not truncate: 0.9999999 must become 1 in an integer label column
        data[:, is_int] = np.rint(data[:, is_int])
    fmt = ["%d" if flag else "%.10g" for flag in is_int]
    buf = io.StringIO(newline="\n")
    buf.write(",".join(columns) + "\n")
    if data.size:
        np.savetxt(buf, data, fmt=fmt, delimiter=",")
    write_atomic(path, buf.getvalue().encode("utf-8"))


def write_fleet(spec: FleetSpec, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each device's TRAIN rows (what the device holds) to ``out_dir/<device_id>.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for dev in generate_fleet(spec):
        path = out / f"{dev.device_id}.csv"
        write_csv(path, dev.columns, dev.train)
        paths.append(path)
    return paths


def pooled(devices: Sequence[DeviceData], part: str) -> np.ndarray:
    """Concatenate every device's ``"train"`` or ``"test"`` rows (central baseline)."""
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    if not devices:
        raise ValueError("no devices to pool")
    if len({d.columns for d in devices}) != 1:
        raise ValueError("devices have different columns")
    return np.concatenate([getattr(d, part) for d in devices])


def column(rows: np.ndarray, columns: Sequence[str], name: str) -> np.ndarray:
    """The ``name`` column of ``rows`` (a view, not a copy)."""
    try:
        idx = list(columns).index(name)
    except ValueError:
        raise KeyError(f"unknown column {name!r}; have {list(columns)}") from None
    return rows[:, idx]
