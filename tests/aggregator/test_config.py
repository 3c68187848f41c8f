from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
from msgspec.structs import asdict, fields

from fedmq.aggregator.config import (
    AggregatorConfig,
    HealthPolicy,
    Limits,
    RobustPolicy,
    RoundPolicy,
)
from fedmq.aggregator.schema import (
    CodecTable,
    HealthTable,
    LimitsTable,
    RobustTable,
    RoundsTable,
    StatisticsTable,
    TrainingTable,
)
from fedmq.protocol.crypto.codec import CODEC_NAMES, CodecParams
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.sums.statistics import StatsParams

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_example_config_loads_with_paths_relative_to_it():
    cfg = AggregatorConfig.from_file(CONFIGS / "aggregator.toml")
    assert cfg.spec.n_params == 5 and cfg.key_bits == 2048 and cfg.policy.quorum == 2
    assert Path(cfg.key_file).is_absolute() and cfg.key_file.endswith("paillier.key")


@pytest.mark.parametrize("text,match", [
    ("[model]\nkind='logistic'\nfeatures=['a']\nn_classes=2\n[rounds]\nrounds=0\n", "rounds"),
    ("[model]\nkind='tree'\nfeatures=['a']\n", r"\[model\] kind: expected \"linear\" or "),
    ("[fleet]\nname='a b'\n[model]\nkind='linear'\nfeatures=['a']\n", "fleet name"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[codec]\nclip=-1\n", "clip"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[rounds]\nspeed=3\n", "unknown"),
    ("[bogus]\n", "unknown"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[codec]\nclipp=1\n", "clipp"),
    ("[model\n", "not valid TOML"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[metrics]\nport=9108\nbind='0.0.0.0'\n",
     r"\[metrics\] bind = '0.0.0.0' is not a loopback address"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[metrics]\nport=70000\n", r"\[metrics\] port"),
    ("", "model"),
])
def test_bad_configs_give_one_clear_error(tmp_path, text, match):
    path = tmp_path / "agg.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        AggregatorConfig.from_file(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        AggregatorConfig.from_file("/nonexistent/agg.toml")


def test_limits_section_is_read_and_checked(tmp_path):
    base = {"model": {"kind": "linear", "features": ["a"]}}
    cfg = AggregatorConfig.from_dict({**base, "limits": {"inbox_bytes": 1024, "status_rate": 5}})
    assert cfg.limits == Limits(inbox_bytes=1024, status_rate=5)
    assert AggregatorConfig.from_dict(base).limits == Limits()
    with pytest.raises(ConfigError, match="limits"):
        AggregatorConfig.from_dict({**base, "limits": {"inbox_megabytes": 1}})
    with pytest.raises(ConfigError, match=r"\[limits\] drain_seconds: expected float, got str"):
        AggregatorConfig.from_dict({**base, "limits": {"drain_seconds": "soon"}})


MODEL = "[model]\nkind = 'logistic'\nfeatures = ['vibration', 'temp', 'rpm']\nn_classes = 2\n"


# Each value a new user wrote (issue 9): silently misread, or a traceback, before.
@pytest.mark.parametrize("table,line,expected", [
    ("output", "resume = \"no\"", '[output] resume: expected bool, got str ("no")'),
    ("rounds", "quorum = true", "[rounds] quorum: expected int, got bool (true)"),
    ("rounds", "rounds = 2.5", "[rounds] rounds: expected int, got float (2.5)"),
    ("rounds", "rounds = 0", "[rounds] rounds: expected int >= 1, got 0"),
    ("keys", "bits = \"abc\"", '[keys] bits: expected int, got str ("abc")'),
    ("keys", "bits = 100", "[keys] bits: expected int >= 512, got 100"),
    ("mqtt", "host = 127", "[mqtt] host: expected str, got int (127)"),
    ("mqtt", "tls = \"no\"", '[mqtt] tls: expected bool, got str ("no")'),
    ("codec", "name = \"zip\"", '[codec] name: expected "packed/1" or "per-value/1", got "zip"'),
    ("limits", "status_rate = 0", "[limits] status_rate: expected float > 0.0, got 0"),
    ("rounds", "speed = 3", "[rounds]: unknown key 'speed' (known: rounds, round_timeout,"),
    ("training", "personal = \"magic\"", '[training] personal: expected "none" or '
     '"finetune" or "ditto" or "intercept", got "magic"'),
    ("training", "ditto_lambdas = []", "[training] ditto_lambdas: expected array of length "
     ">= 1, got []"),
    ("training", "ditto_lambdas = [0.1, -1.0]",
     "[training] ditto_lambdas[1]: expected float >= 0.0, got -1.0"),
    ("training", "personal_epochs = 0", "[training] personal_epochs: expected int >= 1, got 0"),
    ("model", "scale = [1.0, \"x\", 2.0]",
     '[model] scale[1] (feature "temp"): expected float, got str ("x")'),
    ("model", "center = [1.0, 2.0, nan]",
     '[model] center[2] (feature "rpm"): expected a finite number, got nan'),
    ("model", "scale = [1.0, 2.0, -0.5]",
     "[model]: scale[2] (feature 'rpm') must be > 0, got -0.5"),
])
def test_each_mistyped_value_is_one_line_naming_file_table_and_key(tmp_path, table, line,
                                                                  expected):
    text = MODEL + (line + "\n" if table == "model" else f"[{table}]\n{line}\n")
    path = tmp_path / "aggregator.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        AggregatorConfig.from_file(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)
    assert "\n" not in str(err.value)


def test_a_bad_scale_names_the_feature_not_all_values(tmp_path):
    """An error about scale printed all 64 values without naming the feature (issue 9)."""
    features = [f"f{i}" for i in range(64)]
    scale = [1.0] * 64
    scale[41] = 0.0
    path = tmp_path / "aggregator.toml"
    path.write_text(f"[model]\nkind = 'linear'\nfeatures = {features}\nscale = {scale}\n")
    with pytest.raises(ConfigError) as err:
        AggregatorConfig.from_file(path)
    assert str(err.value) == f"{path}: [model]: scale[41] (feature 'f41') must be > 0, got 0.0"


def test_schema_defaults_are_the_settings_defaults():
    assert RoundPolicy(**asdict(RoundsTable())) == RoundPolicy()
    assert Limits(**asdict(LimitsTable())) == Limits()
    assert TrainingSettings(**asdict(TrainingTable())) == TrainingSettings()
    assert CodecParams(**asdict(CodecTable())) == CodecParams()
    stats = {k: v for k, v in asdict(StatisticsTable()).items() if k not in ("enabled", "ranges")}
    assert StatsParams(**stats) == StatsParams()
    assert HealthPolicy(**asdict(HealthTable())) == HealthPolicy()
    robust, policy = RobustTable(), RobustPolicy()
    assert (robust.rule, robust.groups, robust.min_group, robust.trim) == (
        policy.rule, policy.groups, policy.min_group, policy.trim)
    tol = policy.tolerances
    assert (robust.scale_factor, robust.metric_tolerance, robust.growth,
            robust.rows_factor) == (tol.scale_factor, tol.metric, tol.growth, tol.rows)
    [names] = [f.type for f in fields(CodecTable) if f.name == "name"]
    assert get_args(names) == CODEC_NAMES


def test_tls_and_key_paths_are_relative_to_the_config(tmp_path, monkeypatch):
    (tmp_path / "gw" / "tls").mkdir(parents=True)
    (tmp_path / "gw" / "tls" / "ca.crt").write_text("pem")
    (tmp_path / "gw" / "aggregator.toml").write_text(
        MODEL + "[mqtt]\ntls = true\nca_file = 'tls/ca.crt'\n[keys]\n"
        "private_key_file = 'keys/p.key'\n[output]\nstate_dir = 'state'\n")
    monkeypatch.chdir(tmp_path)
    cfg = AggregatorConfig.from_file("gw/aggregator.toml")
    assert cfg.mqtt.ca_file == str(tmp_path / "gw" / "tls" / "ca.crt")
    assert cfg.key_file == str(tmp_path / "gw" / "keys" / "p.key")
    assert cfg.state_dir == str(tmp_path / "gw" / "state")


@pytest.mark.parametrize(("table", "settings"), [
    ("RoundsTable", "fedmq.aggregator.config:RoundPolicy"),
    ("LimitsTable", "fedmq.aggregator.config:Limits"),
    ("TrainingTable", "fedmq.protocol.messages:TrainingSettings"),
    ("CodecTable", "fedmq.protocol.crypto.codec:CodecParams"),
    ("ServerTable", "fedmq.protocol.server:ServerSettings"),
])
def test_the_schema_and_the_settings_it_builds_default_alike(table, settings):
    # The msgspec table validates the file, the frozen dataclass is what the roles use:
    # a default changed in one place only would make a missing key mean two things.
    import dataclasses
    import importlib

    import msgspec

    from fedmq.aggregator import schema

    module, name = settings.split(":")
    cls = getattr(importlib.import_module(module), name)
    struct = getattr(schema, table)
    defaults = {f.name: f.default for f in msgspec.structs.fields(struct)
                if f.default is not msgspec.NODEFAULT}
    shared = [f for f in dataclasses.fields(cls) if f.name in defaults]
    assert len(shared) >= 3
    for field in shared:
        assert defaults[field.name] == field.default, field.name


def test_statistics_off_without_datasheet_values_refuses_to_start(tmp_path):
    """With no center/scale the fleet trained on raw features and ended at 0.56 accuracy
    with exit code 0 (issue 10): now the statistics round derives them, and turning it off
    without datasheet values is refused with the fix."""
    path = tmp_path / "aggregator.toml"
    path.write_text("[model]\nkind = 'logistic'\nfeatures = ['a', 'b']\nn_classes = 2\n")
    assert AggregatorConfig.from_file(path).needs_statistics
    path.write_text(path.read_text() + "[statistics]\nenabled = false\n")
    with pytest.raises(ConfigError) as err:
        AggregatorConfig.from_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: [statistics] enabled = false, but [model] gives no "
                              "center and scale")
    assert "Remove 'enabled = false'" in message and "\n" not in message
    path.write_text("[model]\nkind = 'logistic'\nfeatures = ['a', 'b']\nn_classes = 2\n"
                    "center = [0.0, 1.0]\nscale = [1.0, 2.0]\n[statistics]\nenabled = false\n")
    assert not AggregatorConfig.from_file(path).needs_statistics


def test_statistics_and_health_tables_are_read_and_checked(tmp_path):
    path = tmp_path / "aggregator.toml"
    path.write_text("[model]\nkind = 'linear'\nfeatures = ['a']\ntarget_center = 60.0\n"
                    "[statistics]\nfraction_bits = 16\nmax_abs = 5000.0\n"
                    "[health]\nclipped_share_warning = 0.2\nmissing_class_rounds = 5\n"
                    "[codec]\nmax_agents = 50\n")
    cfg = AggregatorConfig.from_file(path)
    assert cfg.statistics.fraction_bits == 16 and cfg.statistics.max_abs == 5000.0
    assert cfg.statistics.max_agents == 50  # summed like the codec's updates
    assert cfg.health.clipped_share_warning == 0.2 and cfg.health.missing_class_rounds == 5
    assert cfg.needs_statistics  # center, scale and target_scale are still open
    path.write_text("[model]\nkind = 'linear'\nfeatures = ['a']\n[statistics]\nmax_abs = 0.5\n")
    with pytest.raises(ConfigError, match=r"\[statistics\] max_abs: expected"):
        AggregatorConfig.from_file(path)
    path.write_text("[model]\nkind = 'logistic'\nfeatures = ['a']\nn_classes = 2\n"
                    "target_center = 1.0\n")
    with pytest.raises(ConfigError, match="only allowed for kind 'linear'"):
        AggregatorConfig.from_file(path)


def test_a_center_left_from_another_model_says_it_may_simply_go(tmp_path):
    path = tmp_path / "aggregator.toml"
    path.write_text("[model]\nkind = 'linear'\nfeatures = ['a', 'b', 'c']\n"
                    "center = [1.0, 2.0]\n")
    with pytest.raises(ConfigError, match=r"\[model\]: center must have one entry per feature "
                       r"\(3\), got 2 \(or leave it out: a statistics round derives it"):
        AggregatorConfig.from_file(path)


def test_the_privacy_table_calibrates_noise_to_the_budget_and_refuses_mistakes(tmp_path):
    path = tmp_path / "aggregator.toml"
    model = ("[model]\nkind = 'logistic'\nfeatures = ['a', 'b']\nn_classes = 2\n"
             "center = [0.0, 1.0]\nscale = [1.0, 2.0]\n[rounds]\nrounds = 10\nquorum = 5\n")
    path.write_text(model)
    assert not AggregatorConfig.from_file(path).privacy.enabled
    path.write_text(model + "[privacy]\nepsilon = 3.0\nclip = 0.5\n")
    device = AggregatorConfig.from_file(path).privacy.device
    assert device is not None and device.quorum == 5 and device.clip == 0.5
    assert 4.0 < device.noise_multiplier < 6.0  # 10 rounds at epsilon 3, delta 1e-5
    path.write_text(model + "[privacy]\nepsilon = 3.0\nnoise_multiplier = 1.5\n")
    assert AggregatorConfig.from_file(path).privacy.device.noise_multiplier == 1.5
    for bad, key in (("delta = 1.5", "delta"), ("epsilon = -1", "epsilon"),
                     ("clip = 0", "clip"), ("epsilon = 'high'", "epsilon")):
        path.write_text(model + f"[privacy]\n{bad}\n")
        with pytest.raises(ConfigError, match=rf"\[privacy\] {key}"):
            AggregatorConfig.from_file(path)
    # Without datasheet scaling, DP needs the operator's word that exact totals may go.
    path.write_text("[model]\nkind = 'logistic'\nfeatures = ['a']\nn_classes = 2\n"
                    "[privacy]\nepsilon = 3.0\n")
    with pytest.raises(ConfigError, match="exact_aggregates = true"):
        AggregatorConfig.from_file(path)
    path.write_text(path.read_text() + "exact_aggregates = true\n")
    assert AggregatorConfig.from_file(path).privacy.exact_aggregates


def test_colluding_devices_size_the_shares_and_must_stay_below_the_quorum(tmp_path):
    path = tmp_path / "aggregator.toml"
    model = ("[model]\nkind = 'logistic'\nfeatures = ['a', 'b']\nn_classes = 2\n"
             "center = [0.0, 1.0]\nscale = [1.0, 2.0]\n[rounds]\nrounds = 10\nquorum = 5\n"
             "[privacy]\nepsilon = 3.0\n")
    path.write_text(model)
    plain = AggregatorConfig.from_file(path).privacy.device
    assert plain is not None and plain.colluding_devices == 0
    path.write_text(model + "colluding_devices = 2\n")
    device = AggregatorConfig.from_file(path).privacy.device
    assert device is not None and device.colluding_devices == 2 and device.honest_quorum == 3
    assert device.noise_multiplier == pytest.approx(plain.noise_multiplier, rel=1e-5)
    for bad, said in (
            ("5", r"\[privacy\]: colluding_devices = 5 must be below \[rounds\] quorum = 5"),
            ("9", r"\[privacy\]: colluding_devices = 9 must be below \[rounds\] quorum = 5"),
            ("-1", r"\[privacy\] colluding_devices"),
            ("1.5", r"\[privacy\] colluding_devices")):
        path.write_text(model + f"colluding_devices = {bad}\n")
        with pytest.raises(ConfigError, match=said) as info:
            AggregatorConfig.from_file(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    # Checked without device-level DP too: the key never silently means nothing wrong.
    path.write_text(model.replace("epsilon = 3.0", "") + "colluding_devices = 5\n")
    with pytest.raises(ConfigError, match="colluding_devices = 5 must be below"):
        AggregatorConfig.from_file(path)


def test_statistics_ranges_need_one_low_high_pair_per_feature():
    base = {"model": {"kind": "logistic", "features": ["a", "b"], "n_classes": 2}}
    ok = AggregatorConfig.from_dict({**base, "statistics": {"ranges": [[0, 1], [-5, 5]]}})
    assert ok.ranges == ((0.0, 1.0), (-5.0, 5.0))
    for bad, said in (([[0, 1]], "one [low, high] per [model] feature"),
                      ([[0, 1], [5, -5]], "'b' must be [low, high] with low < high")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            AggregatorConfig.from_dict({**base, "statistics": {"ranges": bad}})


def test_the_metrics_endpoint_is_off_unless_a_port_is_given(tmp_path):
    path = tmp_path / "agg.toml"
    path.write_text("[model]\nkind='linear'\nfeatures=['a']\n")
    assert AggregatorConfig.from_file(path).metrics_port == 0
    path.write_text("[model]\nkind='linear'\nfeatures=['a']\n[metrics]\nport=9108\n")
    cfg = AggregatorConfig.from_file(path)
    assert (cfg.metrics_bind, cfg.metrics_port) == ("127.0.0.1", 9108)


def test_the_server_table_sets_the_optimizer(tmp_path):
    path = tmp_path / "agg.toml"
    path.write_text(MODEL + "[server]\noptimizer = 'fedyogi'\nserver_lr = 0.05\ntau = 1e-2\n")
    server = AggregatorConfig.from_file(path).server
    assert (server.optimizer, server.server_lr, server.tau, server.beta2) == (
        "fedyogi", 0.05, 0.01, 0.99)
    path.write_text(MODEL)
    assert AggregatorConfig.from_file(path).server.optimizer == "fedavg"


@pytest.mark.parametrize(("table", "said"), [
    ("optimizer = 'adam'", '[server] optimizer: expected "fedavg" or "fedavgm" or '
     '"fedadam" or "fedyogi" or "fedadagrad", got "adam"'),
    ("server_lr = 0", "[server] server_lr: expected float > 0"),
    ("momentum = 1.0", "[server] momentum: expected float < 1"),
    ("beta1 = -0.1", "[server] beta1: expected float >= 0"),
    ("beta2 = 'high'", "[server] beta2: expected float, got str"),
    ("tau = -1", "[server] tau: expected float > 0"),
    ("lr = 0.1", "[server]: unknown key 'lr' (known: optimizer, server_lr, momentum, "),
])
def test_a_bad_server_table_is_one_line_naming_file_and_key(tmp_path, table, said):
    path = tmp_path / "agg.toml"
    path.write_text(MODEL + f"[server]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        AggregatorConfig.from_file(path)
    assert str(err.value).startswith(f"{path}: ") and said in str(err.value)
    assert "\n" not in str(err.value)


def test_the_non_iid_training_keys_are_read_and_each_mistake_is_one_line(tmp_path):
    path = tmp_path / "aggregator.toml"
    logistic = "[model]\nkind = 'logistic'\nfeatures = ['a']\nn_classes = 3\n"
    path.write_text(logistic + "[training]\nprox_mu = 0.01\naugment = 'oversample+jitter'\n"
                    "jitter = 0.1\ndistill_weight = 0.5\ndistill_temperature = 2.0\n")
    t = AggregatorConfig.from_file(path).training
    assert (t.prox_mu, t.augment, t.jitter, t.distill_weight, t.distill_temperature) == \
        (0.01, "oversample+jitter", 0.1, 0.5, 2.0)
    for bad, match in (
            ("prox_mu = -1", r"\[training\] prox_mu: expected float >= 0"),
            ("prox_mu = inf", r"\[training\] prox_mu: expected a finite number"),
            ("augment = 'mixup'", r'\[training\] augment: expected "none" or "oversample" or'),
            ("jitter = 1.5", r"\[training\] jitter: expected float <= 1"),
            ("distill_weight = -0.5", r"\[training\] distill_weight: expected float >= 0"),
            ("distill_temperature = 0", r"\[training\] distill_temperature: expected float > 0"),
    ):
        path.write_text(logistic + f"[training]\n{bad}\n")
        with pytest.raises(ConfigError, match=match) as info:
            AggregatorConfig.from_file(path)
        assert "\n" not in str(info.value)
    linear = "[model]\nkind = 'linear'\nfeatures = ['a']\n"
    for bad, match in (("distill_weight = 0.5", "distillation needs a classifier"),
                       ("augment = 'oversample'", "a linear model has none")):
        path.write_text(linear + f"[training]\n{bad}\n")
        with pytest.raises(ConfigError, match=rf"aggregator.toml: \[training\] .*{match}"):
            AggregatorConfig.from_file(path)
    path.write_text(linear + "[training]\naugment = 'jitter'\n")
    assert AggregatorConfig.from_file(path).training.augment == "jitter"
    scaled = logistic + "center = [0.0]\nscale = [1.0]\n"
    path.write_text(scaled + "[training]\naugment = 'jitter'\n[privacy]\nsample_epsilon = 3.0\n")
    with pytest.raises(ConfigError, match=r"cannot be combined with .*sample-level DP"):
        AggregatorConfig.from_file(path)
    path.write_text(scaled + "[training]\ndistill_weight = 1.0\n[privacy]\nepsilon = 3.0\n")
    with pytest.raises(ConfigError, match="exact_aggregates = true"):
        AggregatorConfig.from_file(path)
