"""``fedmq export``, ``evaluate`` and ``predict``: use the trained global model outside fedmq.

export: a fitted scikit-learn estimator (joblib), an ONNX graph (through
skl2onnx) or a portable JSON document (``models.export``). The estimators take
raw sensor values: the fleet's standardization is folded into the coefficients.

evaluate: the metrics of a model file on a labelled CSV, picking the columns by
the model's feature names. predict: the same JSON rows the agent publishes on its
local prediction topic, for every row of a CSV.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmq.protocol.errors import ConfigError

if TYPE_CHECKING:
    from fedmq.models import ModelSpec
    from fedmq.models.base import FloatArray

FORMATS = ("sklearn", "onnx", "json")


def load_any(path: str) -> tuple[ModelSpec, FloatArray]:
    """A fedmq model file (.npz/.json, as the aggregator writes) or a JSON export."""
    # Imported here: the parser is built for every fedmq command, numpy is slow to load.
    from fedmq.models import ModelError, load_model
    from fedmq.models.export import from_portable

    p = Path(path)
    try:
        if p.suffix.lower() == ".json":
            try:
                doc = json.loads(p.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelError(f"not a JSON model file: {exc}") from exc
            if isinstance(doc, dict) and "schema" in doc:
                return from_portable(doc)
        spec, params, _meta = load_model(p)
        return spec, params
    except FileNotFoundError as exc:
        raise ConfigError(f"model file {p} not found") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read model file {p}: {exc.strerror}") from exc
    except ModelError as exc:
        text = str(exc)
        raise ConfigError(text if str(p) in text else f"{p}: {text}") from exc


_INSTALL = {"sklearn": 'pip install "fedmq[sklearn]"', "onnx": "pip install 'fedmq[onnx]' "
            "(skl2onnx and onnxruntime)"}


def _need(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"this export needs the Python package {module.split('.')[0]}, "
                          f"which is not installed: {_INSTALL[extra]}") from exc


def export_bytes(spec: ModelSpec, params: FloatArray, fmt: str) -> bytes:
    """The exported model as the bytes of the output file."""
    from fedmq.models import make_model
    from fedmq.models.export import to_portable

    if fmt == "json":
        return (json.dumps(to_portable(spec, params), indent=2) + "\n").encode()
    _need("sklearn", "sklearn" if fmt == "sklearn" else "onnx")
    estimator = make_model(spec).set_params_vector(params).to_sklearn()
    if fmt == "sklearn":
        import io

        joblib = _need("joblib", "sklearn")
        buf = io.BytesIO()
        joblib.dump(estimator, buf)
        return buf.getvalue()
    convert = _need("skl2onnx", "onnx")
    types = _need("skl2onnx.common.data_types", "onnx")
    options = {id(estimator): {"zipmap": False}} if spec.kind == "logistic" else None
    onnx_model = convert.convert_sklearn(
        estimator, initial_types=[("input", types.FloatTensorType([None, spec.n_features]))],
        options=options, target_opset=None)
    return bytes(onnx_model.SerializeToString())


def cmd_export(args: argparse.Namespace) -> int:
    from fedmq.models import make_model
    from fedmq.models.export import SCHEMA
    from fedmq.runtime.files import write_atomic

    spec, params = load_any(args.model)
    data = export_bytes(spec, params, args.format)
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, data)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}") from exc
    what = {"sklearn": f"scikit-learn {type(make_model(spec)).__name__[:-5]} (joblib)",
            "onnx": "ONNX graph (input 'input': float32 rows of "
                    f"{', '.join(spec.features)})",
            "json": f"portable JSON ({SCHEMA})"}[args.format]
    print(f"{spec.kind} model on {spec.n_features} features written to {out}: {what}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fedmq.edge_agent.data import load_csv
    from fedmq.models import ModelError, make_model
    from fedmq.models.evaluation import evaluate

    if len(args.delimiter) != 1:
        raise ConfigError(f"--delimiter must be one character, got {args.delimiter!r}")
    spec, params = load_any(args.model)
    label = args.label or _guess_label(Path(args.data), spec, args.delimiter)
    data = load_csv(args.data, spec.features, label, delimiter=args.delimiter)
    model = make_model(spec).set_params_vector(params)
    try:
        result = evaluate(model, data.X, data.y)
    except ModelError as exc:
        raise ConfigError(f"{args.data}: label column {label!r}: {exc}") from exc
    print(f"model {args.model} ({spec.kind}, {spec.n_features} features) on {args.data}, "
          f"label {label!r}")
    for line in result.lines():
        print(line)
    return 0


def _guess_label(path: Path, spec: ModelSpec, delimiter: str) -> str:
    """The one CSV column that is neither a feature nor a timestamp, if there is one."""
    import csv

    from fedmq.edge_agent.data import open_csv, text_lines

    try:
        with open_csv(path) as fh:
            header = next(csv.reader(text_lines(fh, str(path)), delimiter=delimiter), [])
    except (OSError, UnicodeDecodeError, csv.Error, ConfigError):
        header = []  # load_csv reports the file problem in its own words
    others = [h.strip() for h in header if h.strip() not in (*spec.features, "timestamp")]
    if len(others) == 1:
        return others[0]
    if not header:
        return ""  # load_csv names the real problem (missing, empty, binary)
    raise ConfigError(f"{path}: say which column is the label with --label (candidates: "
                      f"{', '.join(others) or 'none'})")


TIME_COLUMNS = ("timestamp", "ts")


def predict_rows(model_path: str, data_path: str, *, delimiter: str = ","
                 ) -> list[dict[str, Any]]:
    """The agent's prediction payloads for every row of a CSV ("row": its data row number,
    "ts": its numeric timestamp column when it has one)."""
    import numpy as np

    from fedmq.edge_agent.data import DataError, load_csv
    from fedmq.edge_agent.predictions import ActiveModel, prediction_payloads
    from fedmq.models import ModelError, load_model, make_model

    spec, params = load_any(model_path)
    meta: dict[str, Any] = {}
    if Path(model_path).suffix.lower() == ".npz":
        try:
            meta = load_model(model_path)[2]
        except ModelError:
            meta = {}  # load_any read it; a JSON export has no metadata
    header = _header(Path(data_path), delimiter)
    time_col = next((c for c in TIME_COLUMNS if c in header and c not in spec.features), None)
    # load_csv takes one label column: the last feature (or the timestamp) stands in for it.
    timestamps = None
    if time_col is not None:
        try:
            data = load_csv(data_path, spec.features, time_col, delimiter=delimiter)
            X, timestamps = data.X, data.y
        except DataError:
            time_col = None  # a text timestamp (ISO dates): rows are numbered instead
    if time_col is None:
        data = load_csv(data_path, spec.features[:-1], spec.features[-1], delimiter=delimiter)
        X = np.column_stack([data.X, data.y])
    version = meta.get("model_version", 0)
    which = "personal" if Path(model_path).name.startswith("personal") else "global"
    # The gateway keeps each run's model in runs/<run id>/ ("latest" links to it).
    real = Path(model_path).resolve()
    run = str(meta.get("run_id") or (real.parent.name if real.parent.parent.name == "runs"
                                     else ""))
    active = ActiveModel(make_model(spec).set_params_vector(params), which, run,
                         version if isinstance(version, int) else 0)
    rows = np.arange(1, len(X) + 1, dtype=np.float64)
    out = prediction_payloads(active, X, timestamps if timestamps is not None else rows,
                              fleet=str(meta.get("fleet", "")), device="")
    for i, doc in enumerate(out, start=1):
        del doc["device"]
        if timestamps is None:
            del doc["ts"]
        doc["row"] = i
    return out


def _header(path: Path, delimiter: str) -> list[str]:
    import csv

    from fedmq.edge_agent.data import open_csv, text_lines

    try:
        with open_csv(path) as fh:
            return [h.strip() for h in next(csv.reader(text_lines(fh, str(path)),
                                                       delimiter=delimiter), [])]
    except (OSError, UnicodeDecodeError, csv.Error, ConfigError):
        return []  # load_csv reports the file problem in its own words


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """The prediction rows as CSV: row, [ts,] prediction, p_<class>... or value, model, run,
    version."""
    import csv
    import io

    if not rows:
        return ""
    first = rows[0]
    classes = list(first.get("probabilities", {}))
    head = ["row", *(["ts"] if "ts" in first else []), "prediction",
            *([f"p_{c}" for c in classes] if classes else ["value"]), "model", "run",
            "version"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for r in rows:
        probs = [repr(r["probabilities"][c]) for c in classes] if classes \
            else [repr(r["value"])]
        writer.writerow([r["row"], *([repr(r["ts"])] if "ts" in r else []), r["prediction"],
                         *probs, r["model"], r["run"], r["version"]])
    return buf.getvalue()


def cmd_predict(args: argparse.Namespace) -> int:
    from fedmq.runtime.files import write_atomic

    if len(args.delimiter) != 1:
        raise ConfigError(f"--delimiter must be one character, got {args.delimiter!r}")
    if args.publish and not args.config:
        raise ConfigError("--publish needs --config agent.toml (its [local] broker and "
                          "[predictions] topic)")
    rows = predict_rows(args.model, args.data, delimiter=args.delimiter)
    if args.publish:
        return _publish(rows, args.config, args.model)
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows) if args.json \
        else rows_csv(rows)
    if args.out is None:
        print(text, end="")
        return 0
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text.encode())
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}") from exc
    print(f"{len(rows)} predictions of {args.model} on {args.data} written to {out}")
    return 0


def _publish(rows: list[dict[str, Any]], config_path: str, model: str) -> int:
    """The rows on the agent's local prediction topic, over its [local] link (never [mqtt])."""
    from fedmq.edge_agent.config import AgentConfig
    from fedmq.edge_agent.local_link import LocalLink
    from fedmq.runtime.transport import MqttSettings

    cfg = AgentConfig.from_file(config_path)
    settings = cfg.predictions
    if settings is None:
        raise ConfigError(f"{config_path}: [predictions] enabled = false: no topic to publish to")
    local = cfg.local or MqttSettings()
    link = LocalLink(local, client_id=f"{cfg.local_client_id or cfg.agent_id}-predict",
                     persistent=False)
    link.connect()
    sent = 0
    try:
        for row in rows:
            doc = {**row, "fleet": cfg.topics.fleet, "device": cfg.agent_id}
            sent += link.publish(settings.topic, json.dumps(doc, separators=(",", ":")).encode(),
                                 settings.retain, qos=settings.qos, wait=True)
    finally:
        link.close()
    print(f"{sent} of {len(rows)} predictions of {model} published to {settings.topic} on "
          f"{local.host}:{local.port}")
    return 0 if sent == len(rows) else 1


# Where `fedmq simulate` leaves the newest run's model (runs/latest -> runs/<run_id>).
SIMULATED_MODEL = "runs/latest/aggregator/latest/global_model.npz"


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write the global model for scikit-learn, ONNX or JSON",
                       description="Export a fedmq model file for use outside fedmq. The "
                       "estimators take raw feature values in the model's feature order.")
    p.add_argument("--model", default=SIMULATED_MODEL,
                   help=f"fedmq model file (default: {SIMULATED_MODEL})")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="sklearn: joblib file of a fitted estimator (load only files you "
                   "trust: joblib is pickle); onnx: needs the 'onnx' extra; json: portable")
    p.add_argument("--out", required=True, help="output file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="print a model's metrics on a labelled CSV file",
                       description="Classification: accuracy, balanced accuracy, log loss, "
                       "per-class recall, confusion matrix. Regression: MSE, MAE, R^2.")
    p.add_argument("--model", default=SIMULATED_MODEL,
                   help=f"fedmq model file or JSON export (default: {SIMULATED_MODEL})")
    p.add_argument("--data", required=True, help="CSV with the model's feature columns")
    p.add_argument("--label", help="label column (default: the one non-feature column)")
    p.add_argument("--delimiter", default=",", help="CSV delimiter (default: ,)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict every row of a CSV file with a model",
                       description="The same rows the agent publishes on its local "
                       "prediction topic: prediction, class probabilities or value, model "
                       "run and version. CSV on standard output unless --json or --out.")
    p.add_argument("--model", default=SIMULATED_MODEL,
                   help=f"fedmq model file or JSON export (default: {SIMULATED_MODEL})")
    p.add_argument("--data", required=True, help="CSV with the model's feature columns "
                   "(a numeric 'timestamp' or 'ts' column becomes each row's ts)")
    p.add_argument("--out", help="write to this file instead of standard output")
    p.add_argument("--json", action="store_true", help="JSON lines instead of CSV")
    p.add_argument("--delimiter", default=",", help="CSV delimiter (default: ,)")
    p.add_argument("--publish", action="store_true", help="publish each row on the local "
                   "prediction topic of --config (its [local] broker, never the fleet's)")
    p.add_argument("--config", help="agent.toml, for --publish")
    p.set_defaults(func=cmd_predict)
