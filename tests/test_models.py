import pytest
import torch
import torch.nn as nn

from utils import MODELS, count_params, receptive_field
from utils.models import (ARCHS, BlurPool2d, CompactNet, Shift, conv_block, final_net, gap_head, norm, separable_block,
                          transition)
from utils.search import macs_per_image

# Exact counts: a change to any model must be a deliberate change here too.
EXPECTED_PARAMS = {"skeleton": 15042, "lighter": 8870, "regularized": 7624, "final": 3488}
# The search candidates (utils.models.ARCHS) and the first final, step 4's net.
ARCH_PARAMS = {"slim": 4808, "twopool": 4808, "twopool_small": 4444, "twopool_wide": 5824, "separable": 4392,
               "separable_small": 3440, "gap7624": 7624, "onepool_narrow": 5892, "twopool_three": 5764,
               "onepool_small": 4964, "separable_wide": 4880, "separable_shiftbn": 4976,
               "separable_wide_shiftbn": 4576, "separable_shiftbn_pad": 4976,
               "separable_wide_shiftbn_pad": 4576, "separable_narrow_pad2": 3848,
               "separable_stem": 4536, "separable_stem_narrow": 3836,
               "separable_stem_c6": 4482, "separable_stem_c6_pad2": 4482,
               "separable_stem_c6_pad3": 4482, "separable_stem_c6_pad2_silu": 4482,
               "separable_stem_c6_pad2_late_pool": 4482, "separable_stem_c6_pad2_dwact": 4482,
               "separable_stem_c6_pad2_silu_g2w40": 3994, "separable_stem_c6_pad2_silu_residual": 4482,
               "separable_stem_c6_pad2_silu_twopool": 4482, "separable_stem_c6_pad2_silu_blurpool": 4482,
               "separable_stem_c6_pad2_silu_blurpool_w28": 3782, "separable_stem_c6_pad2_silu_blurpool_w26": 3456,
               "separable_stem_c6_pad2_silu_blurpool_mid24": 3954,
               "separable_stem_c6_pad2_silu_blurpool_last_g2": 3970,
               "separable_stem_c8_pad2_silu_blurpool_wide_stem": 3992,
               "separable_stem_c6_pad2_silu_blurpool_mid20": 3786, "separable_stem_c8_pad2_silu_wide_stem": 3992,
               "separable_stem_c8_pad2_silu_blurpool_stem16": 3480,
               "separable_stem_c8_pad2_silu_blurpool_shared24": 3488,
               "separable_stem_c8_pad2_silu_blurpool_shared24_once": 3464}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_log_probabilities(name):
    model = MODELS[name]().eval()
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_parameter_count(name):
    assert count_params(MODELS[name]()) == EXPECTED_PARAMS[name]


def test_series_budgets():
    assert EXPECTED_PARAMS["lighter"] < 10_000
    assert EXPECTED_PARAMS["regularized"] < 8_000
    assert EXPECTED_PARAMS["final"] <= 3500  # round 5's stretch


def test_blocks():
    block = conv_block(4, 6, padding=1, dropout=0.1)
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout]
    assert block[0].bias is None  # BN makes it redundant
    assert block(torch.randn(2, 4, 10, 10)).shape == (2, 6, 10, 10)
    assert transition(6, 3)(torch.randn(2, 6, 10, 10)).shape == (2, 3, 5, 5)
    assert gap_head(6)(torch.randn(2, 6, 5, 5)).shape == (2, 10)


def test_receptive_field_against_hand_computed_stack():
    stack = nn.Sequential(
        nn.Conv2d(1, 2, 3),                          # 28->26  j1 rf3
        nn.Conv2d(2, 2, 3, padding=1),               # 26->26  j1 rf5
        nn.MaxPool2d(2),                             # 26->13  j2 rf6
        nn.Conv2d(2, 2, 3, stride=2, padding=1),     # 13->7   j4 rf10
        nn.Conv2d(2, 2, 3, padding=2, dilation=2),   # 7->7    j4 rf26
        nn.AdaptiveAvgPool2d(1),                     # 7->1    j28 rf50
    )
    rows = receptive_field(stack)
    sizes = [(r["size_in"], r["size_out"]) for r in rows]
    assert sizes == [(28, 26), (26, 26), (26, 13), (13, 7), (7, 7), (7, 1)]
    assert [r["jump_out"] for r in rows] == [1, 1, 2, 4, 4, 28]
    assert [r["rf_out"] for r in rows] == [3, 5, 6, 10, 26, 50]


@pytest.mark.parametrize("name", ["regularized", "final"])
def test_gap_models_see_the_whole_digit_before_pooling(name):
    rows = receptive_field(MODELS[name]())
    before_gap = [r for r in rows if r["type"] == "Conv2d" and r["size_out"] > 1][-1]
    assert before_gap["rf_out"] >= 22


def test_arch_registry_is_what_is_tested():
    assert set(ARCH_PARAMS) == {*ARCHS, "gap7624"}


@pytest.mark.parametrize("arch", sorted(ARCH_PARAMS))
def test_each_arch_count_shape_and_macs(arch):
    model = final_net(arch).eval()
    assert count_params(model) == ARCH_PARAMS[arch]
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    assert 100_000 < macs_per_image(model) < 2_000_000


def test_squeeze_token_is_a_1x1_conv_block():
    net = CompactNet("c4 s2")
    squeeze = net.features[1]
    assert squeeze[0].kernel_size == (1, 1) and squeeze[0].bias is None
    assert [type(m).__name__ for m in squeeze] == ["Conv2d", "BatchNorm2d", "ReLU"]
    # 1x1 keeps the map: 9*4 + 8 (c4) + 4*2 + 4 (s2) + 2*10 (head) weights
    assert count_params(net) == 36 + 8 + 8 + 4 + 20
    assert net.features(torch.randn(1, 1, 28, 28)).shape == (1, 2, 26, 26)


def test_shift_only_batch_norm_has_no_scale_and_starts_as_plain_normalization():
    x = torch.randn(8, 3, 5, 5) * 4 + 2
    shifted = norm(3, scale=False).train()
    assert count_params(shifted) == 3 and isinstance(shifted[1], Shift)
    assert torch.allclose(shifted(x), nn.BatchNorm2d(3).train()(x), atol=1e-5)  # scale 1, shift 0
    with torch.no_grad():
        shifted[1].bias.fill_(0.5)
    assert torch.allclose(shifted(x).mean((0, 2, 3)), torch.full((3,), 0.5), atol=1e-5)


def test_a_shiftbn_layout_drops_every_learned_scale_and_the_depthwise_affine():
    plain, shifted = CompactNet("c4 M d8 s6"), CompactNet("shiftbn c4 M d8 s6")
    # BN channels: c4 4, d8 4 (depthwise) + 8, s6 6. Shift-only keeps one per channel outside the
    # depthwise BN, which keeps none.
    assert count_params(plain) - count_params(shifted) == 2 * (4 + 4 + 8 + 6) - (4 + 8 + 6)
    assert [type(m).__name__ for m in shifted.features[2]] == ["Conv2d", "BatchNorm2d", "Conv2d", "Sequential", "ReLU"]
    assert not shifted.features[2][1].affine
    assert shifted(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="no conv block"):
        CompactNet("shiftbn M")


def test_an_activation_word_replaces_every_relu_and_nothing_else():
    relu, silu = CompactNet("shiftbn c4 M d8 s6"), CompactNet("shiftbn silu c4 M d8 s6")
    kinds = [type(m).__name__ for m in silu.modules()]
    assert "ReLU" not in kinds and kinds.count("SiLU") == 3
    assert [type(m).__name__ for m in relu.modules()].count("ReLU") == 3
    assert count_params(silu) == count_params(relu)
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    silu.load_state_dict(relu.state_dict())  # the same weights, another nonlinearity
    assert not torch.allclose(silu.eval()(x), relu.eval()(x))
    assert CompactNet("silu shiftbn c4").features[0][1][1].bias.shape == (4,)  # the words in any order


def test_dwact_adds_an_activation_after_each_depthwise_filter_and_no_parameter():
    plain, dwact = CompactNet("shiftbn c4 M d8 d8 s6"), CompactNet("dwact shiftbn c4 M d8 d8 s6")
    assert count_params(dwact) == count_params(plain)
    assert [type(m).__name__ for m in dwact.features[2]] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "Sequential",
                                                           "ReLU"]
    assert [type(m).__name__ for m in dwact.modules()].count("ReLU") == 6  # c4, s6 and two per separable block
    assert [type(m).__name__ for m in CompactNet("dwact silu d8").modules()].count("SiLU") == 2
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    # the same weights, one more nonlinearity per block (the ReLU shifts the later layers' indices)
    dwact.load_state_dict(dict(zip(dwact.state_dict(), plain.state_dict().values())))
    assert not torch.allclose(dwact.eval()(x), plain.eval()(x))


def test_a_grouped_token_halves_the_pointwise_weights_and_shuffles_the_channels():
    plain, grouped = CompactNet("shiftbn c4 M d8 d8"), CompactNet("shiftbn c4 M d8 d8g2")
    assert count_params(plain) - count_params(grouped) == 8 * 8 // 2
    block = grouped.features[3]
    assert block[2].groups == 2 and isinstance(block[-1], nn.ChannelShuffle)
    assert grouped(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # the shuffle interleaves the two groups: channel 1 of the output is channel 4 before it
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert block[-1](x).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert CompactNet("shiftbn c4 M d8pg4").features[2][2].groups == 4  # padded and grouped
    with pytest.raises(ValueError, match="divisible by 2"):
        CompactNet("c4 M d7g2")


def test_residual_adds_an_identity_shortcut_only_where_the_width_is_kept():
    plain, residual = CompactNet("shiftbn c4 M d8 d8 d8p"), CompactNet("shiftbn residual c4 M d8 d8 d8p")
    assert count_params(residual) == count_params(plain)
    kinds = [type(m).__name__ for m in residual.features]
    assert kinds == ["Sequential", "MaxPool2d", "Sequential", "Residual", "Residual"]  # c4 -> d8 changes width
    # the same weights, in the same order under other names: only the shortcuts differ
    residual.load_state_dict(dict(zip(residual.state_dict(), plain.state_dict().values())))
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(residual.eval()(x), plain.eval()(x))
    # an unpadded block shrinks 10x10 to 8x8: the shortcut is x's centre, added before the activation
    block, h = residual.features[3], torch.randn(1, 8, 10, 10)
    expected = block.activation(block.body(h) + h[..., 1:9, 1:9])
    assert torch.equal(block(h), expected)
    padded = residual.features[4]
    h = torch.randn(1, 8, 8, 8)
    assert torch.equal(padded(h), padded.activation(padded.body(h) + h))
    grouped = CompactNet("residual silu c4 M d8 d8g2").features[3]
    assert isinstance(grouped.activation, nn.SiLU) and isinstance(grouped.after[0], nn.ChannelShuffle)


def test_the_blurred_pool_is_a_max_at_stride_1_then_a_binomial_blur_at_stride_2():
    plain, blurred = CompactNet("shiftbn c4 d8 M d8"), CompactNet("shiftbn c4 d8 Mb d8")
    assert count_params(blurred) == count_params(plain) and not list(blurred.features[2].parameters())
    assert blurred.features[2].state_dict() == {}  # the fixed filter is no saved weight
    pool = BlurPool2d(3)
    x = torch.randn(2, 3, 24, 24)
    assert pool(x).shape == nn.MaxPool2d(2)(x).shape == (2, 3, 12, 12)
    # by hand: the 2x2 maxima at every offset, the border reflected, [1, 2, 1] x [1, 2, 1] / 16 every second pixel
    maxima = nn.functional.pad(nn.functional.max_pool2d(x, 2, stride=1), (1, 1, 1, 1), mode="reflect")
    taps = torch.tensor([1.0, 2.0, 1.0])
    window = torch.outer(taps, taps) / 16
    expected = torch.stack([torch.stack([(maxima[..., 2 * i:2 * i + 3, 2 * j:2 * j + 3] * window).sum((-1, -2))
                                         for j in range(12)], -1) for i in range(12)], -2)
    assert torch.allclose(pool(x), expected, atol=1e-6)
    # a flat map stays flat: the blur's taps sum to one
    assert torch.allclose(pool(torch.ones(1, 3, 8, 8)), torch.ones(1, 3, 4, 4))
    rows = receptive_field(blurred)
    assert [r["type"] for r in rows][3:5] == ["MaxPool2d", "BlurPool2d"]
    assert (rows[3]["stride"], rows[4]["kernel"], rows[4]["stride"]) == (1, 3, 2)


def test_r_runs_the_block_before_it_again_with_its_filters_shared_and_its_own_batch_norm():
    plain, shared = CompactNet("shiftbn c4 M d8 d8 d8"), CompactNet("shiftbn c4 M d8 d8 R")
    first, again = shared.features[3], shared.features[4]
    assert first[0].weight is again[0].weight and first[2].weight is again[2].weight  # one tensor each
    assert again[1] is not first[1] and again[3] is not first[3]  # a batch norm (statistics, shift) of its own
    # the third block's 72 + 64 weights are not paid again: only its shift
    assert count_params(plain) - count_params(shared) == 8 * 9 + 8 * 8
    assert len(list(shared.parameters())) == len(list(plain.parameters())) - 2
    x = torch.randn(2, 1, 28, 28)
    assert shared(x).shape == (2, 10)
    # the repeat computes the block's filters on the block's own output: by hand, with its own norm
    h = torch.randn(1, 8, 12, 12)
    step = nn.Sequential(first[0], again[1], first[2], again[3], again[4]).eval()
    assert torch.equal(again.eval()(h), step(h))
    # both passes train the one tensor: its gradient is the sum of both uses
    shared(x).sum().backward()
    assert first[2].weight.grad is again[2].weight.grad and first[2].weight.grad.abs().sum() > 0
    # padding, groups and a shortcut come with the block repeated
    repeated = CompactNet("shiftbn c4 M d8 d8pg2 R").features[4]
    assert repeated[0].padding == (1, 1) and repeated[2].groups == 2
    assert type(CompactNet("residual c4 M d8 d8 R").features[4]).__name__ == "Residual"


def test_the_summary_table_says_how_many_weights_torchsummary_counts_twice(capsys):
    from utils.summary import shared_weights, summary_table

    plain, shared = CompactNet("shiftbn c4 M d8 d8"), CompactNet("shiftbn c4 M d8 d8 R")
    assert shared_weights(plain) == 0 and shared_weights(shared) == 8 * 9 + 8 * 8
    summary_table(shared)
    out = capsys.readouterr().out
    per_layer = count_params(shared) + shared_weights(shared)
    assert f"Total params: {per_layer:,}" in out  # torchsummary's own sum, each use of the filters counted
    assert f"the {8 * 9 + 8 * 8:,} weights" in out and f"the model has {count_params(shared):,} parameters" in out
    summary_table(plain)
    assert "once per use" not in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["R c4", "c4 M R", "c4 M d8 R", "c4 c4 M R"])
def test_r_needs_a_block_that_keeps_its_width_right_before_it(layout):
    with pytest.raises(ValueError, match="R in layout"):
        CompactNet(layout)


def test_a_net_with_shared_filters_exports_and_the_program_matches_it(tmp_path):
    from utils.export import export_model

    net = CompactNet("shiftbn silu c4 d8 Mb d8p R d16").eval()
    x = torch.randn(4, 1, 28, 28)
    path = export_model(net, tmp_path / "shared.pt2")
    program = torch.export.load(path).module()
    assert torch.allclose(program(x), net(x), atol=1e-5)
    # the program names a shared tensor twice (its unflattened module has one entry per use), both on one storage
    storages = {p.untyped_storage().data_ptr(): p.numel() for p in program.parameters()}
    assert sum(storages.values()) == count_params(net) < sum(p.numel() for p in program.parameters())


@pytest.mark.parametrize("layout", ["c4 M d8g1", "c4 M d8g0", "c4 M d8g01", "c4 M c8g2", "c4 M d8gp2"])
def test_bad_group_tokens_are_refused(layout):
    with pytest.raises(ValueError, match="bad token"):
        CompactNet(layout)


def test_grouped_residual_and_blurred_pool_nets_export_and_the_program_matches_them(tmp_path):
    from utils.export import export_model

    for arch in ("separable_stem_c6_pad2_silu_g2w40", "separable_stem_c6_pad2_silu_residual",
                 "separable_stem_c6_pad2_silu_blurpool"):
        net = final_net(arch).eval()
        x = torch.randn(4, 1, 28, 28)
        program = torch.export.load(export_model(net, tmp_path / f"{arch}.pt2")).module()
        assert torch.allclose(program(x), net(x), atol=1e-5)


@pytest.mark.parametrize("layout", ["silu silu c4", "relu silu c4", "shiftbn shiftbn c4", "silu", "dwact dwact c4",
                                    "residual residual c4"])
def test_layout_words_are_named_once(layout):
    with pytest.raises(ValueError):
        CompactNet(layout)


def test_a_shiftbn_net_exports_and_the_program_matches_it(tmp_path):
    from utils.export import export_model

    net = final_net("separable_shiftbn").eval()
    x = torch.randn(4, 1, 28, 28)
    program = torch.export.load(export_model(net, tmp_path / "net.pt2")).module()
    assert torch.allclose(program(x), net(x), atol=1e-5)


def test_macs_counted_by_hand_for_one_conv():
    # 1 -> 2 channels, 3x3, no padding: 26*26 outputs * 2 channels * 9 taps, then the 2 -> 10 head.
    assert macs_per_image(CompactNet("c2")) == 26 * 26 * 2 * 9 + 2 * 10


def test_compact_net_layout_and_dropout():
    net = CompactNet("c4 M c6p d8", dropout=0.1, dropout_kind="channel")
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Sequential", "Dropout2d", "MaxPool2d", "Sequential", "Dropout2d", "Sequential"]
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    block = separable_block(4, 8)
    assert block[0].groups == 4 and block(torch.randn(1, 4, 6, 6)).shape == (1, 8, 4, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="nope"), "unknown arch 'nope'"),
    (dict(arch="twopool", dropout=1.5), "dropout must be in"),
    (dict(arch="twopool", dropout=0.1, dropout_kind="spatial"), "dropout_kind must be one of"),
])
def test_final_net_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        final_net(**kwargs)


@pytest.mark.parametrize("layout", ["", "M", "Mb", "c8 Mx", "c8 mb", "c8 x3", "c0", "c8q", "s0", "s8p"])
def test_compact_net_rejects_bad_layouts(layout):
    with pytest.raises(ValueError):
        CompactNet(layout)


def test_step4_net_refuses_channel_dropout():
    with pytest.raises(ValueError, match="element-wise dropout only"):
        final_net("gap7624", dropout=0.05, dropout_kind="channel")


def test_the_final_model_tables_say_the_shift_offsets_are_trained():
    """torchsummary counts a layer's parameters as trainable only through a `weight`, which a Shift has
    not; the generated README section says so, with the counts read from the model."""
    from utils.report import final_model_tables
    from utils.summary import shared_weights

    text = final_model_tables()
    shifts = sum(m.bias.numel() for m in final_net().modules() if isinstance(m, Shift))
    total = EXPECTED_PARAMS["final"]
    # torchsummary adds each layer's weights: a filter the final's R block shares counts once per use there
    assert shifts > 0 and f"Total params: {total + shared_weights(final_net()):,}" in text
    assert f"Non-trainable params: {shifts}" in text  # torchsummary's reading
    assert f"the {shifts} learned offsets" in text and f"all {total:,} parameters are" in text
