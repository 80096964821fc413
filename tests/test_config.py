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
        ("method=gan", r"method: 'gan' is not one of \['imm', 'fm', 'ddpm', 'cm', 'vae', 'meanflow', 'shortcut', 'tvm', "
                       r"'fmm'\]"),
        ("model.parameterization=edm", r"model\.parameterization: .*simple_edm"),
        ("trajectory=vp", r"trajectory: .*ot_fm"),
        ("imm.k=0", r"imm\.k: 0 is out of range \(allowed: >= 1 and <= 20\)"),
        ("imm.k=21", r"imm\.k: 21"),
        ("imm.group_size=3", r"imm\.group_size: M=3 must divide"),
        ("eval.steps=[0,2]", r"eval\.steps"),
        ("imm.estimator=w", r"imm\.estimator"),
        ("sample.sampler=euler", r"sample\.sampler: 'euler' does not apply to method=imm"),
        ("imm.sampler=euler", r"imm\.sampler: 'euler' is not one of \['pushforward', 'restart'\]"),
        ("sample.schedule=cosine", r"sample\.schedule: 'cosine' is not one of \[None, 'uniform', 'eta', 'half_eta'\]"),
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
    """A YAML mistake printed a 35-line traceback from the yaml parser."""
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


def test_a_named_variant_states_only_what_it_changes_over_its_base(tmp_path):
    from imm.sampling import sampler_of, schedule_of

    shipped, paper = load_config("toy2d"), load_config("toy2d_paper")
    assert (sampler_of(shipped), sampler_of(paper), schedule_of(paper)) == ("restart", "pushforward", "uniform")
    assert paper.imm.group_size == shipped.imm.group_size == 4 and paper.model == shipped.model
    assert schedule_of(load_config("digits")) == "eta" and schedule_of(load_config("digits_paper")) == "uniform"
    # a user's own variant: a base by path relative to the file, a chain of bases, overrides on top
    (tmp_path / "a.yaml").write_text("base: toy2d\ntrain:\n  steps: 7\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nimm:\n  k: 9\n")
    cfg = load_config(tmp_path / "sub" / "b.yaml", ["imm.k=11"])
    assert (cfg.train.steps, cfg.imm.k, cfg.data.name) == (7, 11, "8gaussians")
    (tmp_path / "a.yaml").write_text("base: sub/b.yaml\n")
    with pytest.raises(ConfigError, match="base: configs form a cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere\n")
    with pytest.raises(ConfigError, match="config file 'nowhere' not found"):
        load_config(tmp_path / "c.yaml")


def test_the_imm_sampling_choice_belongs_to_imm_so_a_baseline_on_the_same_config_keeps_its_own():
    from imm.sampling import sampler_of, schedule_of

    for name in ("toy2d", "digits"):
        fm = load_config(name, ["method=fm"])
        assert (sampler_of(fm), schedule_of(fm)) == ("euler", "uniform")
        assert sampler_of(load_config(name, ["method=cm"])) == "restart"
    cfg = load_config("digits", ["sample.sampler=restart", "sample.schedule=uniform"])  # sample.* still wins
    assert (sampler_of(cfg), schedule_of(cfg)) == ("restart", "uniform")
