"""`fedmq simulate`: the [simulate] table and the flags pass one typed schema."""

from __future__ import annotations

from typing import get_args

import pytest
from msgspec.structs import asdict, fields

from fedmq.cli import main
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.server import OPTIMIZERS, ServerSettings
from fedmq.simulation.config import SCALINGS, SimulateTable
from fedmq.simulation.run import TASKS, SimulationOptions, options_from


@pytest.mark.parametrize("line,expected", [
    ('agents = "5"', '[simulate] agents: expected int, got str ("5")'),
    ("agents = 0", "[simulate] agents: expected int >= 1, got 0"),
    ('iid = "false"', '[simulate] iid: expected bool, got str ("false")'),
    ("plot = 1", "[simulate] plot: expected bool, got int (1)"),
    ("rounds = 2.5", "[simulate] rounds: expected int, got float (2.5)"),
    ('task = "faults"', '[simulate] task: expected "fault" or "fault_type" or '
                        '"next_temperature", got "faults"'),
    ("quorum_fraction = 1.5", "[simulate] quorum_fraction: expected float <= 1.0, got 1.5"),
    ('scaling = "sheet"', '[simulate] scaling: expected "federated" or "datasheet", '
                          'got "sheet"'),
    ("agentz = 7", "[simulate]: unknown key 'agentz' (known: agents, rounds,"),
])
def test_the_file_is_typed(tmp_path, line, expected):
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"[simulate]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        options_from(str(cfg), {})
    assert str(err.value).startswith(f"{cfg}: {expected}"), str(err.value)


@pytest.mark.parametrize("argv,expected", [
    (["--agents", "0"], "--agents: expected int >= 1, got 0"),
    (["--rounds", "0"], "--rounds: expected int >= 1, got 0"),
    (["--samples", "3"], "--samples: expected int >= 50, got 3"),
    (["--lr", "-1"], "--lr: expected float > 0.0, got -1.0"),
    (["--quorum", "2"], "--quorum: expected float <= 1.0, got 2.0"),
    (["--key-bits", "64"], "--key-bits: expected int >= 512, got 64"),
    (["--server-lr", "0"], "--server-lr: expected float > 0.0, got 0.0"),
    (["--server-momentum", "1"], "--server-momentum: expected float < 1.0, got 1.0"),
    (["--prox-mu", "-1"], "--prox-mu: expected float >= 0.0, got -1.0"),
    (["--distill-weight", "-1"], "--distill-weight: expected float >= 0.0, got -1.0"),
    (["--distill-weight", "0.5", "--task", "next_temperature"],
     "--task next_temperature is a regression: --distill-weight and --augment oversample "
     "need a classifier's classes"),
    (["--augment", "jitter", "--dp-sample-epsilon", "3"],
     "--augment cannot be combined with --dp-sample-epsilon (a repeated row would exceed "
     "DP-SGD's per-row sensitivity)"),
])
def test_flags_get_the_same_check_as_one_line(capsys, argv, expected):
    assert main(["simulate", *argv, "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err == f"fedmq: error: {expected}\n"


def test_a_mistyped_file_value_is_one_line_from_the_cli(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[simulate]\nagents = "5"\n')
    assert main(["simulate", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err == (f'fedmq: error: {cfg}: [simulate] agents: expected int, '
                                       f'got str ("5")\n')


def test_schema_matches_the_options():
    table = asdict(SimulateTable())
    assert SimulationOptions(**table) == SimulationOptions()
    [tasks] = [f.type for f in fields(SimulateTable) if f.name == "task"]
    assert set(get_args(tasks)) == set(TASKS)
    [scalings] = [f.type for f in fields(SimulateTable) if f.name == "scaling"]
    literal, none = get_args(scalings)  # unset: chosen by whether DP is on
    assert get_args(literal) == SCALINGS and none is type(None)
    [optimizers] = [f.type for f in fields(SimulateTable) if f.name == "server_optimizer"]
    assert get_args(optimizers) == OPTIMIZERS


def test_the_server_optimizer_reaches_the_aggregator_config(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[simulate]\nserver_optimizer = "fedyogi"\nserver_lr = 0.05\n')
    opts = options_from(str(cfg), {})
    assert opts.server == ServerSettings(optimizer="fedyogi", server_lr=0.05)
    # Unset, an adaptive optimizer takes fedmq init's step, plain FedAvg 1.0.
    assert options_from(None, {"server_optimizer": "fedadam"}).server.server_lr == 0.2
    assert options_from(None, {"server_optimizer": "fedavg"}).server.server_lr == 1.0
    assert options_from(str(cfg), {"server_optimizer": "fedavgm"}).server.optimizer == "fedavgm"
    # fedmq init's step for a regression: FedAvgM at momentum 0.7.
    assert options_from(None, {"server_optimizer": "fedavgm", "server_momentum": 0.7}).server \
        == ServerSettings(optimizer="fedavgm", momentum=0.7)
    with pytest.raises(ConfigError, match="--server-optimizer: expected"):
        options_from(None, {"server_optimizer": "adam"})


def test_scaling_from_the_file_and_the_flag(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[simulate]\nscaling = "datasheet"\n')
    assert options_from(str(cfg), {}).scaling == "datasheet"
    assert options_from(str(cfg), {"scaling": "federated"}).scaling == "federated"
    assert SimulationOptions().scaling == "federated"  # no datasheet values by default
    with pytest.raises(ConfigError, match="--scaling: expected"):
        options_from(None, {"scaling": "both"})


def test_the_example_config_loads():
    opts = options_from("configs/simulate.toml", {"agents": 3})
    assert opts.agents == 3 and opts.rounds == 10 and opts.out_dir.endswith("runs")


def test_spare_sensors_from_the_file_and_the_flag(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[simulate]\nspare_sensors = 95\n")
    assert options_from(str(cfg), {}).spare_sensors == 95
    assert options_from(str(cfg), {"spare_sensors": 2}).spare_sensors == 2
    assert main(["simulate", "--spare-sensors", "-1", "--no-plot"]) == 2
    assert capsys.readouterr().err == "fedmq: error: --spare-sensors: expected int >= 0, got -1\n"
    cfg.write_text('[simulate]\nspare_sensors = "95"\n')
    with pytest.raises(ConfigError, match=r"\[simulate\] spare_sensors: expected int, got str"):
        options_from(str(cfg), {})
