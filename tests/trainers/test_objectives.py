"""The objectives against hand-computed values on a tiny example, advantages, shaping, config.

The example: two episodes, three token columns, the second column of episode 1 padded out.

    pi_theta = [[0.5, 0.25, 0.1], [0.2, 0.65, 0.3]]
    pi_old   = [[0.4, 0.5,  0.1], [0.4, 0.5,  0.3]]
    ratio    = [[1.25, 0.5, 1.0], [0.5, 1.3,  1.0]]
    mask     = [[1, 1, 0], [1, 1, 1]]             (5 tokens)
    A        = [1.0, -2.0]
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from trainers.cli import parse_args  # noqa: E402
from trainers.config import EnvSpec, TrainConfig, make_config  # noqa: E402
from trainers.grpo import group_advantages, overlong_penalty, policy_loss  # noqa: E402

P_NEW = [[0.5, 0.25, 0.1], [0.2, 0.65, 0.3]]
P_OLD = [[0.4, 0.5, 0.1], [0.4, 0.5, 0.3]]
MASK = [[1, 1, 0], [1, 1, 1]]
ADV = [1.0, -2.0]
L = math.log


def tensors(requires_grad: bool = False):
    logp = torch.tensor(P_NEW, dtype=torch.float64).log().requires_grad_(requires_grad)
    old = torch.tensor(P_OLD, dtype=torch.float64).log()
    return logp, old, torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK)


def test_grpo_sequence_mean_clipped_objective():
    logp, old, adv, mask = tensors()
    out = policy_loss("grpo", logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2)
    # episode 1 (A=+1): min(1.25, 1.2) = 1.2; min(0.5, 0.8) = 0.5            -> mean 0.85
    # episode 2 (A=-2): min(-1.0, -1.6) = -1.6; min(-2.6, -2.4) = -2.6; -2.0  -> mean -6.2/3
    expected = -((1.2 + 0.5) / 2 + (-1.6 - 2.6 - 2.0) / 3) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # clip removed the gradient of: ep1 t1 (A>0, r>1.2) and ep2 t1 (A<0, r<0.8)
    assert out.stats["clipped"] == 2 and out.stats["tokens"] == 5


def test_grpo_kl_term_is_k3_to_the_reference():
    logp, old, adv, mask = tensors()
    ref = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.65, 0.6]], dtype=torch.float64).log()
    out = policy_loss("grpo", logp, old, adv, mask, ref_logp=ref, beta=0.1)

    def k3(p_ref, p):  # pi_ref/pi - log(pi_ref/pi) - 1
        return p_ref / p - L(p_ref / p) - 1

    seq1 = (1.2 - 0.1 * k3(0.5, 0.5)) + (0.5 - 0.1 * k3(0.5, 0.25))
    seq2 = (-1.6 - 0.1 * k3(0.1, 0.2)) + (-2.6 - 0.1 * k3(0.65, 0.65)) + (-2.0 - 0.1 * k3(0.6, 0.3))
    assert out.loss.item() == pytest.approx(-(seq1 / 2 + seq2 / 3) / 2, abs=1e-12)


def test_dapo_clip_higher_token_level():
    logp, old, adv, mask = tensors()
    out = policy_loss("dapo", logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
    # ep1 t1: min(1.25, clip(1.25, 0.8, 1.28)) = 1.25 (clip-higher leaves it); t2: 0.5
    # ep2: -1.6, -2.6, -2.0; token-level: divide by all 5 tokens of the batch
    assert out.loss.item() == pytest.approx(-(1.25 + 0.5 - 1.6 - 2.6 - 2.0) / 5, abs=1e-12)
    assert out.stats["clipped"] == 1  # only ep2 t1


def test_dapo_normalises_by_the_whole_minibatch_across_micro_batches():
    logp, old, adv, mask = tensors()
    whole = policy_loss("dapo", logp, old, adv, mask, epsilon_high=0.28).loss
    parts = sum(
        policy_loss("dapo", logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], epsilon_high=0.28, num_tokens=5).loss
        for i in range(2)
    )
    assert parts.item() == pytest.approx(whole.item(), abs=1e-12)


def test_cispo_value_uncapped_and_capped():
    logp, old, adv, mask = tensors()
    out = policy_loss("cispo", logp, old, adv, mask, cispo_max_ratio=5.0)
    # sum of sg(r) * A * log pi over the 5 tokens, / 5
    total = 1.25 * 1 * L(0.5) + 0.5 * 1 * L(0.25) + 0.5 * -2 * L(0.2) + 1.3 * -2 * L(0.65) + 1.0 * -2 * L(0.3)
    assert out.loss.item() == pytest.approx(-total / 5, abs=1e-12)
    assert out.stats["clipped"] == 0

    capped = policy_loss("cispo", logp, old, adv, mask, cispo_max_ratio=1.1)
    total = 1.1 * 1 * L(0.5) + 0.5 * 1 * L(0.25) + 0.5 * -2 * L(0.2) + 1.1 * -2 * L(0.65) + 1.0 * -2 * L(0.3)
    assert capped.loss.item() == pytest.approx(-total / 5, abs=1e-12)
    assert capped.stats["clipped"] == 2  # ratios 1.25 and 1.3 exceed the absolute cap 1.1


def test_cispo_gradient_flows_through_every_token_including_clipped():
    logp, old, adv, mask = tensors(requires_grad=True)
    policy_loss("cispo", logp, old, adv, mask, cispo_max_ratio=1.1).loss.backward()
    # d(-J)/d log pi_t = -sg(w_t) A / N on every unmasked token: clipped ones keep weight 1.1
    w = [[1.1, 0.5, 0.0], [0.5, 1.1, 1.0]]
    expected = torch.tensor(
        [[-w[i][t] * ADV[i] / 5 * MASK[i][t] for t in range(3)] for i in range(2)], dtype=torch.float64
    )
    assert torch.allclose(logp.grad, expected, atol=1e-12)
    assert (logp.grad[mask.bool()] != 0).all()
    assert logp.grad[0, 2] == 0  # the padded column gets nothing

    # whereas DAPO's clip zeroes the gradient of a token whose ratio left the trust region
    logp2, old2, adv2, mask2 = tensors(requires_grad=True)
    policy_loss("dapo", logp2, old2, adv2, mask2, epsilon_low=0.2, epsilon_high=0.28).loss.backward()
    assert logp2.grad[1, 0] == 0 and logp2.grad[0, 0] != 0


def test_cispo_min_ratio_is_optional_and_absolute():
    logp, old, adv, mask = tensors()
    out = policy_loss("cispo", logp, old, adv, mask, cispo_max_ratio=5.0, cispo_min_ratio=0.6)
    total = 1.25 * L(0.5) + 0.6 * L(0.25) + 0.6 * -2 * L(0.2) + 1.3 * -2 * L(0.65) + 1.0 * -2 * L(0.3)
    assert out.loss.item() == pytest.approx(-total / 5, abs=1e-12)


def test_on_policy_ratio_one_gives_reinforce_gradient_for_all_objectives():
    # with pi_old = sg(pi_theta) every objective's gradient is -A/N grad log pi (grpo: per sequence)
    for algo in ("grpo", "dapo", "cispo"):
        logp = torch.tensor(P_NEW, dtype=torch.float64).log().requires_grad_(True)
        adv, mask = torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK)
        policy_loss(algo, logp, logp.detach(), adv, mask).loss.backward()
        if algo == "grpo":
            expected = [[-1 / 2 / 2, -1 / 2 / 2, 0], [2 / 3 / 2] * 3]
        else:
            expected = [[-1 / 5, -1 / 5, 0], [2 / 5] * 3]
        assert torch.allclose(logp.grad, torch.tensor(expected, dtype=torch.float64), atol=1e-12), algo


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.8])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    a = group_advantages(rewards, groups, "group")
    # group 0: mean .5, population std .5; group 1: all equal -> 0; group 2: mean .5, std .3
    assert torch.allclose(a, torch.tensor([1.0, -1, -1, 1, 0, 0, -1, 1]), atol=1e-4)
    none = group_advantages(rewards, groups, "none")
    assert torch.allclose(none, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, -0.3, 0.3]), atol=1e-6)
    batch = group_advantages(rewards, groups, "batch")
    assert torch.allclose(batch, none / rewards.std(unbiased=False), atol=1e-4)


def test_overlong_penalty_dapo_eq13():
    assert overlong_penalty(32, 48, 16) == 0.0
    assert overlong_penalty(40, 48, 16) == pytest.approx(-0.5)
    assert overlong_penalty(48, 48, 16) == pytest.approx(-1.0)
    assert overlong_penalty(49, 48, 16) == -1.0
    assert overlong_penalty(44, 48, 16, factor=2.0) == pytest.approx(-1.5)


def test_presets_and_the_cispo_cap_is_never_silently_0_2():
    assert make_config("cispo").cispo_max_ratio == 5.0
    dapo = make_config("dapo")
    assert (dapo.epsilon_low, dapo.epsilon_high) == (0.2, 0.28)
    assert dapo.dynamic_sampling and dapo.overlong_shaping and dapo.mask_truncated
    assert make_config("grpo").beta == 0.04
    with pytest.raises(ValueError, match="absolute bound"):
        make_config("cispo", overrides={"cispo_max_ratio": 0.2})
    with pytest.raises(ValueError, match="unknown config"):
        make_config("dapo", overrides={"epsilon": 0.3})


def test_toml_then_cli_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'algo = "dapo"\ngroup_size = 4\nlearning_rate = 1e-5\n'
        '[[envs]]\nname = "arithmetic"\nweight = 2.0\nkwargs = { level = "medium" }\n'
        '[[envs]]\nname = "guess-number"\n'
    )
    config = parse_args(["--config", str(toml), "--group-size", "6", "--no-dynamic-sampling", "--lora-target-modules=q_proj,v_proj"])
    assert config.algo == "dapo" and config.epsilon_high == 0.28
    assert config.group_size == 6 and config.learning_rate == 1e-5 and not config.dynamic_sampling
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.envs == [EnvSpec("arithmetic", 2.0, {"level": "medium"}), EnvSpec("guess-number")]

    config = parse_args(["arithmetic?level=easy*3", "guess-number", "--algo", "grpo", "--steps", "7"])
    assert config.algo == "grpo" and config.steps == 7 and config.beta == 0.04
    assert config.envs == [EnvSpec("arithmetic", 3.0, {"level": "easy"}), EnvSpec("guess-number")]
    assert isinstance(TrainConfig().envs[0], EnvSpec)
