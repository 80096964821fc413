"""Config loading, overrides and validation: each mistake names the field and the allowed values."""

import pytest

from imm.config import ConfigError, load_config


def test_builtin_config_and_overrides():
    cfg = load_config("toy2d", ["imm.group_size=8", "imm.kernel=rbf", "eval.steps=[1,2]"])
    assert cfg.imm.group_size == 8 and cfg.imm.kernel == "rbf" and list(cfg.eval.steps) == [1, 2]
    assert cfg.method == "imm" and cfg.data.name == "8gaussians"


@pytest.mark.parametrize(
    "override,match",
    [
        ("imm.kernel=gauss", r"imm\.kernel: 'gauss' is not one of \['laplace', 'rbf', 'energy'\]"),
        ("imm.mapping=linear", r"imm\.mapping: .*constant_eta"),
        ("method=gan", r"method: 'gan' is not one of \['imm', 'fm', 'ddpm', 'cm', 'vae'\]"),
        ("model.parameterization=edm", r"model\.parameterization: .*simple_edm"),
        ("trajectory=vp", r"trajectory: .*ot_fm"),
        ("imm.k=0", r"imm\.k: 0 is out of range \(allowed: >= 1 and <= 20\)"),
        ("imm.k=21", r"imm\.k: 21"),
        ("imm.group_size=3", r"imm\.group_size: M=3 must divide"),
        ("eval.steps=[0,2]", r"eval\.steps"),
        ("imm.estimator=w", r"imm\.estimator"),
        ("sample.sampler=euler", r"sample\.sampler: 'euler' does not apply to method=imm"),
        ("imm.k=abc", r"imm\.k"),
        ("imm.nonsense=1", r"nonsense"),
        ("eps_t=0.999", r"eps_t, T"),
        ("train.lr=0", r"train\.lr"),
    ],
)
def test_bad_values_name_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("toy2d", [override])


def test_u_estimator_needs_groups():
    with pytest.raises(ConfigError, match="imm.estimator"):
        load_config("toy2d", ["imm.estimator=u", "imm.group_size=1"])


def test_fm_needs_ot_fm_and_batch_splits_over_workers():
    with pytest.raises(ConfigError, match="trajectory"):
        load_config("toy2d", ["method=fm", "trajectory=cosine"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config("toy2d", ["trainer.num_workers=3"])
    with pytest.raises(ConfigError, match="per-worker batch"):
        load_config("toy2d", ["trainer.num_workers=2", "train.batch_size=12", "imm.group_size=4"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="toy2d"):
        load_config("nope.yaml")


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, capsys):
    """Issue 14, point 4: a YAML mistake printed a 35-line traceback from the yaml parser."""
    from orchestrator import cli

    run = tmp_path / "run.yaml"
    run.write_text("method: imm\n  train: 3\n")
    with pytest.raises(ConfigError, match=rf"^{run}:2:8: YAML syntax error: mapping values are not allowed"):
        load_config(run)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: x\nbase: {config: toy2d\nspace:\n")
    for argv in (["train", str(run)], ["sweep", str(sweep)], ["submit", str(sweep), "--cluster", "http://h:8265"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"imm-orch: error: {argv[1]}:") and "YAML syntax error" in err and err.count("\n") == 1
