"""Building blocks and the models of the five steps.

Every model maps a normalized ``(N, 1, 28, 28)`` batch to ``(N, 10)`` log-probabilities.
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F


def named(builder):
    """Mark what a factory builds with its name (``model.builder``), for the saved config."""
    @functools.wraps(builder)
    def build(*args, **kwargs):
        model = builder(*args, **kwargs)
        model.builder = builder.__name__
        return model
    return build


class Shift(nn.Module):
    """A learned per-channel offset: the half of batch norm's affine step a shift-only BN keeps."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x + self.bias.view(1, -1, 1, 1)


def norm(channels: int, scale: bool = True) -> nn.Module:
    """Batch norm; with ``scale=False`` its learned scale is left out (shift only). Before a ReLU
    whose output feeds a conv, a per-channel scale can be folded into that conv's weights, so
    dropping it loses nothing the net can express and frees one parameter per channel."""
    if scale:
        return nn.BatchNorm2d(channels)
    return nn.Sequential(nn.BatchNorm2d(channels, affine=False), Shift(channels))


def conv_block(c_in: int, c_out: int, padding: int = 0, batch_norm: bool = True,
               dropout: float = 0.0, scale: bool = True, activation=nn.ReLU) -> nn.Sequential:
    """3x3 conv -> (BN) -> ReLU (or ``activation``) -> (dropout). With BN the conv bias is redundant,
    so it is dropped."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=padding, bias=not batch_norm)]
    if batch_norm:
        layers.append(norm(c_out, scale))
    layers.append(activation())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def transition(c_in: int, c_out: int, bias: bool = False) -> nn.Sequential:
    """Halve the resolution (max-pool) and squeeze channels with a 1x1 conv."""
    return nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c_in, c_out, 1, bias=bias))


def gap_head(c_in: int, classes: int = 10) -> nn.Sequential:
    """Global average pooling, then a 1x1 conv as the classifier: no dense layer at all."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, classes, 1, bias=False),
                         nn.Flatten())


class PlainNet(nn.Module):
    """Steps 1-2: conv blocks without BN or dropout; a big last conv covers the whole map.

    Layout: two 3x3 blocks (28 -> 24), a third (-> 22), pool + 1x1, then 3x3 blocks down to
    ``head_size`` and one ``head_size`` x ``head_size`` conv to the 10 classes.
    """

    def __init__(self, c1=8, c2=16, c3=16, squeeze=8, c4=16, c5=16, extra=0, head_size=7):
        super().__init__()
        self.block1 = nn.Sequential(conv_block(1, c1, batch_norm=False),
                                    conv_block(c1, c2, batch_norm=False),
                                    conv_block(c2, c3, batch_norm=False))
        self.transition = transition(c3, squeeze, bias=True)
        layers = [conv_block(squeeze, c4, batch_norm=False), conv_block(c4, c5, batch_norm=False)]
        layers += [conv_block(c5, c5, batch_norm=False) for _ in range(extra)]
        self.block2 = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(c5, 10, head_size), nn.Flatten())

    def forward(self, x):
        x = self.block2(self.transition(self.block1(x)))
        return F.log_softmax(self.head(x), dim=1)


@named
def skeleton_net() -> PlainNet:
    """Step 1: the whole pipeline on a plain ~15k-parameter conv net."""
    return PlainNet(c1=8, c2=16, c3=16, squeeze=8, c4=16, c5=16, extra=0, head_size=7)


@named
def lighter_net() -> PlainNet:
    """Step 2: the same layout under 10k parameters (narrower, one more conv, smaller head)."""
    return PlainNet(c1=8, c2=12, c3=12, squeeze=8, c4=12, c5=12, extra=1, head_size=5)


class GapNet(nn.Module):
    """Steps 3-5: conv/BN/ReLU blocks, one early transition, a padded last block, GAP head.

    Resolution: 28 -> 26 -> 24 | pool 12 | -> 10 -> 8 -> 6 -> 6 (padded) | GAP.
    The receptive field reaches 28 at the last block, so GAP sees the whole digit.
    """

    def __init__(self, c1=8, c2=12, squeeze=8, c3=12, c4=12, c5=12, c6=12, dropout=0.0):
        super().__init__()
        self.block1 = nn.Sequential(conv_block(1, c1, dropout=dropout),
                                    conv_block(c1, c2, dropout=dropout))
        self.transition = transition(c2, squeeze)
        self.block2 = nn.Sequential(conv_block(squeeze, c3, dropout=dropout),
                                    conv_block(c3, c4, dropout=dropout),
                                    conv_block(c4, c5, dropout=dropout),
                                    conv_block(c5, c6, padding=1))
        self.head = gap_head(c6)

    def forward(self, x):
        x = self.block2(self.transition(self.block1(x)))
        return F.log_softmax(self.head(x), dim=1)


REGULARIZED_WIDTHS = (8, 12, 10, 14, 14, 14, 12)  # c1, c2, squeeze, c3, c4, c5, c6


@named
def regularized_net(dropout: float = 0.05) -> GapNet:
    """Steps 3-5: BN + dropout + GAP, 7,624 parameters."""
    return GapNet(*REGULARIZED_WIDTHS, dropout=dropout)


def separable_block(c_in: int, c_out: int, padding: int = 0, scale: bool = True,
                    activation=nn.ReLU, depthwise_activation: bool = False, groups: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (one filter per channel) -> BN -> pointwise 1x1 -> BN -> ReLU (or ``activation``).

    9*c_in + c_in*c_out weights instead of 9*c_in*c_out: width gets cheap, so a net can afford
    more channels at the same budget. With ``scale=False`` the middle BN keeps no affine step at
    all (the pointwise conv and the BN after it absorb both) and the last one only a shift.
    ``depthwise_activation``: the activation after the middle BN too (MobileNetV1's block), one more
    nonlinearity per block at no parameter. ``groups`` > 1 splits the pointwise conv into that many
    groups (c_in*c_out/groups weights) and shuffles the channels after the block (ShuffleNet), so the
    next block's groups each see channels of every group here.
    """
    if c_in % groups or c_out % groups:
        raise ValueError(f"a pointwise conv in {groups} groups needs channels divisible by {groups}, "
                         f"got {c_in} -> {c_out}")
    middle = nn.BatchNorm2d(c_in) if scale else nn.BatchNorm2d(c_in, affine=False)
    after_depthwise = [middle, activation()] if depthwise_activation else [middle]
    shuffle = [nn.ChannelShuffle(groups)] if groups > 1 else []
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=padding, groups=c_in, bias=False),
                         *after_depthwise, nn.Conv2d(c_in, c_out, 1, groups=groups, bias=False),
                         norm(c_out, scale), activation(), *shuffle)


class Residual(nn.Module):
    """A block with an identity shortcut added before its activation: after(activation(body(x) + x)).

    ``body`` is the block up to its activation, ``after`` what follows it (a channel shuffle, or
    nothing). A block without padding shrinks the map by 2, so the shortcut takes the centre of x;
    it has no parameter either way (ResNet's identity path)."""

    def __init__(self, body: nn.Module, activation: nn.Module, after: nn.Module):
        super().__init__()
        self.body, self.activation, self.after = body, activation, after

    def forward(self, x):
        y = self.body(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        shortcut = x[..., crop:x.shape[-2] - crop, crop:x.shape[-1] - crop] if crop else x
        return self.after(self.activation(y + shortcut))


def with_shortcut(block: nn.Sequential) -> Residual:
    """``block`` with an identity shortcut around it, added just before its last activation."""
    last = max(i for i, layer in enumerate(block) if isinstance(layer, tuple(ACTIVATIONS.values())))
    return Residual(block[:last], block[last], block[last + 1:])


class BlurPool2d(nn.Module):
    """Halve the map anti-aliased (Zhang 2019, "Making convolutional networks shift-invariant again"):
    a 2x2 max-pool at stride 1, then a fixed 3x3 binomial blur ([1, 2, 1] x [1, 2, 1] / 16) taken at
    stride 2. A plain 2x2 max-pool keeps every second maximum, so a digit moved by one pixel can give
    another map; the blur low-passes before the map is thinned. The filter is a buffer, not a
    parameter, and the output is the plain pool's size (24x24 -> 12x12)."""

    kernel_size, stride, padding = 3, 2, 1  # the blur's, for utils.summary.receptive_field

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("blur", (torch.outer(taps, taps) / 16).expand(channels, 1, 3, 3).clone(),
                             persistent=False)
        self.max = nn.MaxPool2d(2, stride=1)

    def forward(self, x):
        x = F.pad(self.max(x), (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.blur, stride=2, groups=self.blur.shape[0])


def squeeze_block(c_in: int, c_out: int, scale: bool = True, activation=nn.ReLU) -> nn.Sequential:
    """1x1 conv -> BN -> ReLU (or ``activation``): c_in*c_out weights to change the width without
    touching the map."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), norm(c_out, scale), activation())


def share_conv_weights(block: nn.Module, source: nn.Module) -> None:
    """Point every conv of ``block`` at the weights of the matching conv in ``source`` (same shapes): one
    set of filters applied twice, each pass with its own batch norm (its own statistics and shift). The
    shared weights are one parameter, counted once, trained by the gradients of both passes."""
    convs = [(mine, theirs) for mine, theirs in zip(block.modules(), source.modules()) if isinstance(mine, nn.Conv2d)]
    for mine, theirs in convs:
        if mine.weight.shape != theirs.weight.shape or mine.bias is not None:
            raise ValueError("share_conv_weights needs blocks of the same shape, built without conv biases")
        mine.weight = theirs.weight


DROPOUT_KINDS = {"element": nn.Dropout, "channel": nn.Dropout2d}
# A layout's pooling tokens, each built for the channels it receives.
POOLS = {"M": lambda channels: nn.MaxPool2d(2), "Mb": BlurPool2d}
# A layout's activation word. ReLU zeroes every negative input, so a channel whose pre-activation sits
# below zero passes nothing and learns nothing; at 6-8 channels a stage has few to lose. SiLU (x * sigmoid x,
# "swish" in MobileNetV3 and EfficientNet) is smooth and lets a little through below zero, at no parameter.
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


class CompactNet(nn.Module):
    """A small net written as a layout string, so a search can name its candidates.

    Tokens, left to right: ``c8`` a 3x3 conv block to 8 channels without padding (the map shrinks by 2),
    ``c8p`` the same with padding 1, ``d16`` a depthwise-separable block to 16 channels, ``s8`` a 1x1
    conv block to 8 channels (a squeeze: mixes channels, keeps the map), ``M`` a 2x2 max-pool, ``Mb``
    the same anti-aliased (``BlurPool2d``). Every block is conv -> BN -> ReLU; the head is global
    average pooling and a 1x1 conv to the 10 classes. ``dropout`` (``dropout_kind`` "element" or
    "channel") follows every block but the last. Words before the tokens set the whole net: ``shiftbn``
    uses batch norm without a learned scale throughout (``norm``), an activation's name from
    ``ACTIVATIONS`` (``silu``) replaces every ReLU, and ``dwact`` puts the activation after each
    separable block's depthwise filter too (``separable_block``), and ``residual`` gives every block
    that keeps its channel count an identity shortcut (``Residual``). A separable token may end in
    ``gK`` (``d40g2``, ``d40pg2``): its pointwise conv in K groups, the channels shuffled after it
    (``separable_block``). ``R`` runs the block just before it again on its own output, with the same conv
    weights (shared, counted once) and a batch norm of its own (``share_conv_weights``): one block more of
    depth for the price of its shifts. It needs a block that keeps its width, and not a pool, before it.
    """

    def __init__(self, layout: str, dropout: float = 0.0, dropout_kind: str = "element"):
        super().__init__()
        tokens = layout.split()
        words = []
        while tokens and tokens[0] in ("shiftbn", "dwact", "residual", *ACTIVATIONS):
            words.append(tokens.pop(0))
        named_activations = [w for w in words if w in ACTIVATIONS]
        if len(set(words)) < len(words) or len(named_activations) > 1:
            raise ValueError(f"layout {layout!r} names a word twice or two activations: {' '.join(words)}")
        scale = "shiftbn" not in words
        depthwise_activation = "dwact" in words
        shortcuts = "residual" in words
        activation = ACTIVATIONS[named_activations[0] if named_activations else "relu"]
        convs = [t for t in tokens if t not in POOLS]
        if not convs:
            raise ValueError(f"layout {layout!r} has no conv block")
        if dropout_kind not in DROPOUT_KINDS:
            raise ValueError(f"dropout_kind must be one of {sorted(DROPOUT_KINDS)}, got {dropout_kind!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.layout = layout
        layers, c_in, seen, build_last, last, last_in = [], 1, 0, None, None, None
        for token in tokens:
            if token in POOLS:
                layers.append(POOLS[token](c_in))
                build_last = None  # R repeats the block just before it, not one across a pool
                continue
            if token == "R":
                if build_last is None or last_in != c_in:
                    raise ValueError(f"R in layout {layout!r} must follow a conv block that keeps its width "
                                     "(it runs that block's filters again)")
                block = build_last()
                share_conv_weights(block, last)
            else:
                build_last = self._builder(token, layout, c_in, scale, activation, depthwise_activation)
                last_in, block = c_in, build_last()
                last = block
            c_out = [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            if shortcuts and c_in == c_out:
                block = with_shortcut(block)
            layers.append(block)
            seen += 1
            if dropout > 0 and seen < len(convs):
                layers.append(DROPOUT_KINDS[dropout_kind](dropout))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = gap_head(c_in)

    @staticmethod
    def _builder(token, layout, c_in, scale, activation, depthwise_activation):
        """What builds a fresh block for ``token`` on ``c_in`` channels (built again for an ``R`` after it)."""
        match = re.fullmatch(r"c(\d+)(p?)|d(\d+)(p?)(?:g(\d+))?|s(\d+)", token)
        if not match or int(match[1] or match[3] or match[6]) < 1 or int(match[5] or 2) < 2:
            raise ValueError(f"bad token {token!r} in layout {layout!r}: "
                             "use cN, cNp, dN, dNp, dNgK, dNpgK (K >= 2 groups), sN, R, M or Mb")
        if match[6]:
            return functools.partial(squeeze_block, c_in, int(match[6]), scale, activation)
        if match[1]:
            return functools.partial(conv_block, c_in, int(match[1]), 1 if match[2] else 0, scale=scale,
                                     activation=activation)
        return functools.partial(separable_block, c_in, int(match[3]), 1 if match[4] else 0, scale, activation,
                                 depthwise_activation, int(match[5] or 1))

    def forward(self, x):
        return F.log_softmax(self.head(self.features(x)), dim=1)


# The candidates of the search (README, "Model search"). Sizes 28 -> 26 -> 24 | 12 -> ...
ARCHS = {
    "slim": "c8 c8 M c12 c12 c16",            # 4,808: one pool, last conv on 8x8 -> 6x6
    "twopool": "c8 c8 M c12 c12 M c16p",      # 4,808: same weights, second pool, last conv on 4x4
    "twopool_small": "c8 c8 M c10 c12 M c16p",  # 4,444
    "twopool_wide": "c8 c8 M c12 c16 M c16p",  # 5,824: the fallback if no <= 5,000 net holds
    "separable": "c8 c8 M d16 d24 d32 d32",   # 4,392: depthwise-separable after the pool
    "separable_small": "c8 c8 M d16 d32 d32",  # 3,440
    # Round 2 (issue 12): where the parameters sit and how long resolution is kept.
    "onepool_narrow": "c8 c10 M s8 c12 c12 c12 c12p",  # 5,892: gap7624's shape, narrower, 1x1 squeeze
    "twopool_three": "c8 c8 M c10 c12 c12 M c16p",     # 5,764: three convs at 12x12, last on 3x3
    "onepool_small": "c8 c8 M s8 c10 c10 c12 c12p",    # 4,964
    # Round 4 (issue 21): width is cheap in depthwise-separable blocks.
    "separable_wide": "c8 c8 M d16 d32 d32 d32",       # 4,880
    # BN without a learned scale frees 304 of separable_wide's parameters; they widen the first
    # block after the pool, where 8 channels fan out to only 16.
    "separable_shiftbn": "shiftbn c8 c8 M d24 d32 d32 d32",  # 4,976
    # separable_wide's widths without the scales: what dropping them costs, apart from the width they buy.
    "separable_wide_shiftbn": "shiftbn c8 c8 M d16 d32 d32 d32",  # 4,576
    # separable_shiftbn's weights with the first block padded: every later map 2 pixels wider, more
    # multiply-adds (648k against 538k) on the same 4,976 parameters, and a 6x6 map into the head.
    "separable_shiftbn_pad": "shiftbn c8 c8 M d24p d32 d32 d32",  # 4,976
    # Toward 4,000: padding paid at 4,976 (a narrower spread over seeds), so it goes on the smaller
    # stacks. separable_wide_shiftbn padded, 606k multiply-adds against 511k:
    "separable_wide_shiftbn_pad": "shiftbn c8 c8 M d16p d32 d32 d32",  # 4,576
    # Two blocks padded keep the 12x12 map twice: narrower blocks at about the final's 648k multiply-adds.
    "separable_narrow_pad2": "shiftbn c8 c8 M d16p d24p d28 d32",  # 3,848
    # Round 5 (issue 29): the stem's second 3x3 conv (8 -> 8: 576 weights and a shift) as a separable block
    # (72 + 64 and a shift): 440 parameters fewer at full resolution, where the stem sees every pixel.
    "separable_stem": "shiftbn c8 d8 M d24p d32 d32 d32",  # 4,536
    "separable_stem_narrow": "shiftbn c8 d8 M d24p d28 d28 d28",  # 3,836
    # Under the 4,500 floor at the stem net's widths after the pool: 6 channels from the first conv, which
    # sees every pixel and only feeds the depthwise filters (54 parameters fewer, less work at 26x26).
    "separable_stem_c6": "shiftbn c6 d8 M d24p d32 d32 d32",  # 4,482
    # The same weights with the second separable block padded too, round 4's zero-parameter lever (padding
    # the first block narrowed the final's spread): every later map 2 pixels wider, 8x8 into the head.
    "separable_stem_c6_pad2": "shiftbn c6 d8 M d24p d32p d32 d32",  # 4,482
    # ...and the third one too: 12, 12, 12 and 10 pixels after the pool, 10x10 into the head.
    "separable_stem_c6_pad3": "shiftbn c6 d8 M d24p d32p d32p d32",  # 4,482
    # The family's best screen with SiLU for every ReLU: no parameter more, every channel's negative side
    # kept in play (ACTIVATIONS).
    "separable_stem_c6_pad2_silu": "shiftbn silu c6 d8 M d24p d32p d32 d32",  # 4,482
    # The padded net's weights with the pool one block later: the first separable block (8 -> 24) works
    # on the 24x24 map instead of 12x12, so 24 channels are drawn from the full-resolution detail before
    # it is halved. No parameter more, about a quarter more multiply-adds; 8x8 into the head as before.
    "separable_stem_c6_pad2_late_pool": "shiftbn c6 d8 d24p M d32p d32 d32",  # 4,482
    # The padded net with a ReLU after every depthwise filter as well (MobileNetV1's block): its clean
    # training digits stop at about 99.5 %, so it lacks capacity, and a nonlinearity costs no parameter.
    "separable_stem_c6_pad2_dwact": "shiftbn dwact c6 d8 M d24p d32p d32 d32",  # 4,482
    # The 1x1 convs hold 3,056 of the SiLU net's 4,482 weights. In two groups with a channel shuffle
    # (ShuffleNet) they cost half, and the blocks after the first one widen from 32 to 40 channels:
    # under 4,000 with 8 more channels a block.
    "separable_stem_c6_pad2_silu_g2w40": "shiftbn silu c6 d8 M d24p d40pg2 d40g2 d40g2",  # 3,994
    # The SiLU net with an identity shortcut around each block that keeps its width (the last two,
    # centre-cropped): no parameter more, and an easier path for the gradient through the stack.
    "separable_stem_c6_pad2_silu_residual": "shiftbn silu residual c6 d8 M d24p d32p d32 d32",  # 4,482
    # The SiLU net's weights with a second max-pool after the 12x12 blocks: the last two blocks work on
    # 6x6 maps (padded), so the receptive field before the head grows from 22 to 32 pixels (the whole
    # digit, from every position) at a quarter fewer multiply-adds (370k against 490k).
    "separable_stem_c6_pad2_silu_twopool": "shiftbn silu c6 d8 M d24p d32p M d32p d32p",  # 4,482
    # The SiLU net with its one max-pool anti-aliased (BlurPool2d): no parameter more; a digit shifted by
    # a pixel keeps more of its 12x12 map, where the training augmentation shifts digits by up to 1.4 px.
    "separable_stem_c6_pad2_silu_blurpool": "shiftbn silu c6 d8 Mb d24p d32p d32 d32",  # 4,482
    # Under the 4,000 aim with the blurred pool: the last three blocks at 28 channels instead of 32 (the
    # probes' 3,836 narrow stem net, which held five draws of six, with the c6 stem, SiLU and Mb).
    "separable_stem_c6_pad2_silu_blurpool_w28": "shiftbn silu c6 d8 Mb d24p d28p d28 d28",  # 3,782
    # ...and at 26 channels, under the 3,500 stretch.
    "separable_stem_c6_pad2_silu_blurpool_w26": "shiftbn silu c6 d8 Mb d24p d26p d26 d26",  # 3,456
    # Under 4,000 keeping the last two blocks at 32 (narrowing them gave back the blurred pool's lift):
    # the first padded 12x12 block stays at 24 channels, so the first 32-channel block mixes 24, not 32.
    "separable_stem_c6_pad2_silu_blurpool_mid24": "shiftbn silu c6 d8 Mb d24p d24p d32 d32",  # 3,954
    # ...or every width kept and only the last block's 1x1 in two groups (shuffled before the head, which
    # mixes all 32 again): half of one 1,024-weight conv, where grouping all of them cost a screen.
    "separable_stem_c6_pad2_silu_blurpool_last_g2": "shiftbn silu c6 d8 Mb d24p d32p d32 d32g2",  # 3,970
    # Every cut to the 1x1s so far cost level. A weight at full resolution is used 576-676 times an image, one
    # after the pool 64-144 times: a wider stem (8 and 12 channels, +90 parameters) paid for by the two 12x12
    # blocks (20 and 24 channels), the last two kept at 32.
    "separable_stem_c8_pad2_silu_blurpool_wide_stem": "shiftbn silu c8 d12 Mb d20p d24p d32 d32",  # 3,992
    # The wider stem's ablation: the same net with the 4,482 final's stem (6 and 8 channels), nothing else
    # changed; what the 206 parameters at full resolution buy.
    "separable_stem_c6_pad2_silu_blurpool_mid20": "shiftbn silu c6 d8 Mb d20p d24p d32 d32",  # 3,786
    # ...and with a plain max-pool: the anti-aliased pool's ablation on this net.
    "separable_stem_c8_pad2_silu_wide_stem": "shiftbn silu c8 d12 M d20p d24p d32 d32",  # 3,992
    # Under the 3,500 stretch, further the way the wider stem went: the full-resolution block to 16
    # channels, both padded 12x12 blocks to 16, the last two kept at 32.
    "separable_stem_c8_pad2_silu_blurpool_stem16": "shiftbn silu c8 d16 Mb d16p d16p d32 d32",  # 3,480
    # Capacity per parameter instead of moving weights: the 3,992 net's front (c8 d12 Mb d20p d24p), then a
    # 24 -> 24 padded block run twice with the same filters (R: each pass its own batch norm) and one block to
    # 32 before the head, in place of the two 32-channel blocks. One block deeper, 633k multiply-adds against
    # 489k, and a 10x10 map into the head.
    "separable_stem_c8_pad2_silu_blurpool_shared24": "shiftbn silu c8 d12 Mb d20p d24p d24p R d32",  # 3,488
    # ...and its ablation: the same net without the second pass (R), 24 shifts fewer; what the repeat buys.
    "separable_stem_c8_pad2_silu_blurpool_shared24_once": "shiftbn silu c8 d12 Mb d20p d24p d24p d32",  # 3,464
}
FINAL_ARCH = "separable_stem_c8_pad2_silu_blurpool_shared24"


@named
def final_net(arch: str = FINAL_ARCH, dropout: float | None = None, dropout_kind: str = "element") -> nn.Module:
    """Step 5: a compact layout from ``ARCHS``, or "gap7624" (step 4's net, the first final).

    ``dropout`` None means the arch's own default: 0.05 for "gap7624" (as in steps 3-4), none for
    the compact layouts.
    """
    if dropout_kind not in DROPOUT_KINDS:
        raise ValueError(f"dropout_kind must be one of {sorted(DROPOUT_KINDS)}, got {dropout_kind!r}")
    if arch == "gap7624":
        if dropout_kind != "element":
            raise ValueError(f"arch 'gap7624' has element-wise dropout only, got dropout_kind={dropout_kind!r}")
        return GapNet(*REGULARIZED_WIDTHS, dropout=0.05 if dropout is None else dropout)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: use one of {', '.join([*ARCHS, 'gap7624'])}")
    return CompactNet(ARCHS[arch], dropout=dropout or 0.0, dropout_kind=dropout_kind)


MODELS = {"skeleton": skeleton_net, "lighter": lighter_net, "regularized": regularized_net,
          "final": final_net}
