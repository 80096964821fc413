"""The paper's central claim on a 2D mixture: with the same training budget, IMM at 1 and 2 steps beats
flow matching at 2 steps. Measured in energy distance to held-out data (imm/configs/toy2d.yaml)."""

import pytest

from imm.config import load_config
from imm.train import train_loop


@pytest.mark.slow
def test_imm_few_steps_beats_flow_matching_at_two_steps():
    imm = train_loop(load_config("toy2d", ["eval.steps=[1,2]"]))
    fm = train_loop(load_config("toy2d", ["method=fm", "eval.steps=[2]"]))
    print(f"IMM 1 step {imm['energy/steps_1']:.4f}, IMM 2 steps {imm['energy/steps_2']:.4f}, "
          f"FM 2 steps {fm['energy/steps_2']:.4f}")
    # Measured margin >= 23x over two seeds (tuning notes on issue 2); 5x leaves room for machine noise.
    assert imm["energy/steps_1"] < fm["energy/steps_2"] / 5
    assert imm["energy/steps_2"] < fm["energy/steps_2"] / 5
