from minichatgpt.experience import AdaptiveKLController, FixedKLController


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.1)
    ctl.update(100.0, 64)
    assert ctl.value == 0.1


def test_adaptive_controller_moves_toward_target():
    high, low = AdaptiveKLController(0.1, target=6.0, horizon=1000), AdaptiveKLController(0.1, target=6.0, horizon=1000)
    high.update(12.0, 100)  # KL twice the target: error clipped to +0.2
    low.update(3.0, 100)  # KL half the target: error -0.5 clipped to -0.2
    assert high.value == 0.1 * (1 + 0.2 * 100 / 1000)
    assert low.value == 0.1 * (1 - 0.2 * 100 / 1000)
    on_target = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    on_target.update(6.0, 100)
    assert on_target.value == 0.1
