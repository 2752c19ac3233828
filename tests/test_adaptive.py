"""Seeds on demand: the [seeds] rule in a sweep file and on the command line."""

from __future__ import annotations

import pytest
from test_sweep import write_sweep

from nanoact.errors import ConfigError
from nanoact.sweep import load_sweep

RULE = '[seeds]\nstart = 3\nstep = 2\nmax = 7\ntarget = { final_val_loss = 0.005, pd_tv = 0.002 }\n'


def _file(tmp_path, rule=RULE, seeds='"train.seed" = [42, 43, 44]'):
    p = write_sweep(tmp_path, grid=f'"model.activation" = ["relu", "gelu"]\n{seeds}')
    p.write_text(p.read_text() + rule)
    return p


def test_a_rule_starts_at_its_first_round_and_its_fingerprint_covers_the_rule(tmp_path):
    spec = load_sweep(path=_file(tmp_path))
    assert spec.grid["train.seed"] == [42, 43, 44] and spec.seed_pool == (42, 43, 44, 45, 46, 47, 48)
    assert len(spec.cells()) == 6 and spec.seed_rule.schedule() == (3, 5, 7)
    later = spec.with_seed_count(5)
    assert later.grid["train.seed"] == [42, 43, 44, 45, 46] and later.fingerprint() == spec.fingerprint()
    other = load_sweep(path=_file(tmp_path, RULE.replace("0.005", "0.004")))
    assert other.fingerprint() != spec.fingerprint()  # another target is another study
    assert load_sweep(path=_file(tmp_path, "")).fingerprint() != spec.fingerprint()


def test_the_command_line_sets_or_replaces_the_target(tmp_path):
    spec = load_sweep(path=_file(tmp_path, "", '"train.seed" = [1, 2, 3, 4, 5, 6]'))
    ruled = spec.with_seed_rule({"final_val_loss": 0.01}, 10)
    assert ruled.grid["train.seed"] == [1, 2, 3] and ruled.seed_pool == tuple(range(1, 11))
    assert ruled.seed_rule.targets == {"final_val_loss": 0.01} and ruled.seed_rule.step == 2
    assert spec.with_seed_rule({"final_val_loss": 0.01}, None).seed_rule.max == 6  # the listed seeds
    with pytest.raises(ConfigError, match="--max-seeds needs a target"):
        spec.with_seed_rule(None, 10)
    file_rule = load_sweep(path=_file(tmp_path)).with_seed_rule(None, 9)
    assert file_rule.seed_rule.max == 9 and file_rule.seed_rule.targets["pd_tv"] == 0.002


@pytest.mark.parametrize("rule,msg", [
    ("[seeds]\nstart = 3\n", "needs target"),
    ("[seeds]\nstart = 2\ntarget = { pd_tv = 0.1 }\n", "seeds.start must be an integer >= 3"),
    ("[seeds]\ntarget = { val_loss = 0.1 }\n", "unknown metric 'val_loss'"),
    ("[seeds]\nrounds = 3\ntarget = { pd_tv = 0.1 }\n", "unknown key 'rounds'"),
    ("[seeds]\nmax = 2\ntarget = { pd_tv = 0.1 }\n", "seeds.max must be an integer >= seeds.start"),
])
def test_a_bad_rule_names_the_file_and_the_key(tmp_path, rule, msg):
    p = _file(tmp_path, rule)
    with pytest.raises(ConfigError, match=msg) as e:
        load_sweep(path=p)
    assert str(p) in str(e.value)


def test_a_rule_cannot_grow_seeds_of_a_crossed_grid(tmp_path):
    p = _file(tmp_path, RULE, '"train.init_seed" = [1, 2]\n"train.data_seed" = [1, 2]')
    with pytest.raises(ConfigError, match="cannot be combined with the grid axis train.init_seed"):
        load_sweep(path=p)
