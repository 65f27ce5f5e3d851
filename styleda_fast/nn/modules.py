"""Style-augmentation layers: MixStyle, PermutedAdaIN, DSU, and PODA/FAMix transfer toward a StyleBank.

Every layer acts only in training mode, while ``enabled``, and then with probability ``p`` per call; it draws all
its random numbers from its own ``torch.Generator`` (``generator=`` a generator, an int seed, or ``None`` for torch's
global generator). When it does not act it returns ``x`` itself. The math is in the functions of
:mod:`styleda_fast.nn.functional`, which take the draws as arguments.

Under ``torch.compile`` the draws run in an opaque operator (``styleda_fast_nn::draw``) that calls the same Python
drawing code at run time, so a compiled model draws what the eager model draws from the same generator state, and
the graph has no break. A compiled graph cannot skip work on a random decision (``torch.cond`` would, but inductor
currently mis-lays out its operands, see the README), so compiled, a layer computes its augmentation on every call
and keeps ``x`` where the coin said no (MixStyle with identity draws is exactly ``x``; the others select with
``torch.where``).
"""

from __future__ import annotations

import itertools
import math
import weakref

import torch
from torch import Tensor, nn

from styleda_fast.bank import StyleBank
from styleda_fast.core.checks import check_grid
from styleda_fast.nn import functional as F
from styleda_fast.ops.class_stats import patch_dominant_class
from styleda_fast.ops.style_mix import local_style_mix

__all__ = ["DistributionUncertainty", "MixStyle", "PermutedAdaIN", "StyleAugmentation", "StyleBankAugment"]


_LAYERS: weakref.WeakValueDictionary[int, StyleAugmentation] = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)


def _register(layer: StyleAugmentation) -> int:
    key = next(_KEYS)
    _LAYERS[key] = layer
    return key


def _layer(key: int) -> StyleAugmentation:
    layer = _LAYERS.get(key)
    if layer is None:
        raise RuntimeError(f"styleda_fast.nn: the augmentation layer with key {key} no longer exists")
    return layer


@torch.library.custom_op("styleda_fast_nn::draw", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _draw_op(key: int, batch: int, channels: int, labels: Tensor | None) -> list[Tensor]:
    """The random draws of layer ``key`` for one call: ``[act, *draws]`` (identity draws when ``act`` is false)."""
    layer = _layer(key)
    draws = layer._draw(batch, channels, labels)
    act = draws is not None
    if not act:
        draws = layer._identity_draws(batch, channels)
    return [torch.tensor(act, device=layer._draw_device()), *(t.contiguous() for t in draws)]


@_draw_op.register_fake
def _draw_op_fake(key, batch, channels, labels):
    layer = _layer(key)
    return [torch.empty((), dtype=torch.bool, device=layer._draw_device()), *layer._fake_draws(batch, channels)]


def _check_probability(p, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(p).__name__}")
    if not 0 <= p <= 1:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    return float(p)


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number > 0, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _make_generator(generator, device: torch.device) -> tuple[torch.Generator | None, int | None]:
    """``(generator, seed)`` from ``None`` (torch's global generator), an int seed, or a ``torch.Generator``."""
    if generator is None:
        return None, None
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device=device).manual_seed(generator), generator
    if isinstance(generator, torch.Generator):
        return generator, None
    raise TypeError(f"generator must be None, an int seed or a torch.Generator, got {type(generator).__name__}")


class StyleAugmentation(nn.Module):
    """Base of the style-augmentation layers: training-mode only, probability ``p``, own generator, on/off switch.

    Subclasses define ``_draw_params`` (the draws of one acting call), ``_identity_draws`` and ``_fake_draws``
    (same shapes), and ``_augment(x, draws)``.
    """

    _exact_identity = False  # whether _augment with identity draws returns exactly x (then no torch.where compiled)

    def __init__(self, p: float, generator=None, generator_device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.p = p
        self.generator, self.seed = _make_generator(generator, torch.device(generator_device))
        self.enabled = True
        self._key = _register(self)

    def __setstate__(self, state) -> None:  # copies (deepcopy, pickle) get their own key in the draw registry
        super().__setstate__(state)
        self._key = _register(self)

    @property
    def p(self) -> float:
        """The probability of acting on a call, in ``[0, 1]``; checked on every assignment."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = _check_probability(value)

    # switches

    def enable(self) -> StyleAugmentation:
        """Switch the layer on (it acts in training mode); returns the layer."""
        self.enabled = True
        return self

    def disable(self) -> StyleAugmentation:
        """Switch the layer off (it returns its input unchanged, also in training mode); returns the layer."""
        self.enabled = False
        return self

    def _generator_repr(self) -> str:
        if self.generator is None:
            return "global"
        return f"seed={self.seed}" if self.seed is not None else f"torch.Generator({self.generator.device})"

    def _common_repr(self) -> str:
        return f"generator={self._generator_repr()}" + ("" if self.enabled else ", enabled=False")

    # draws

    def _draw_device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def _draw(self, batch: int, channels: int, labels: Tensor | None) -> tuple[Tensor, ...] | None:
        """The draws of one call, or ``None`` when the coin (probability ``p``) says not to act."""
        if self.p < 1:
            coin = torch.rand((), generator=self.generator, device=self._draw_device())
            if coin.item() >= self.p:
                return None
        return self._draw_params(batch, channels, labels)

    def _draw_params(self, batch: int, channels: int, labels: Tensor | None) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _identity_draws(self, batch: int, channels: int) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _fake_draws(self, batch, channels) -> tuple[Tensor, ...]:
        return tuple(torch.empty_like(t) for t in self._identity_draws(batch, channels))

    def _augment(self, x: Tensor, draws: tuple[Tensor, ...]) -> Tensor:
        raise NotImplementedError

    # forward

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        F.check_features(x)
        if not (self.training and self.enabled and self.p > 0):
            return x
        labels = self._labels_for(x, labels)
        if torch.compiler.is_compiling():
            act, *draws = torch.ops.styleda_fast_nn.draw(self._key, x.shape[0], x.shape[1], labels)
            y = self._augment(x, tuple(draws))
            if self.p >= 1 or self._exact_identity:
                return y
            return torch.where(act.to(x.device), y, x)
        draws = self._draw(x.shape[0], x.shape[1], labels)
        if draws is None:
            return x
        return self._augment(x, draws)

    def _labels_for(self, x: Tensor, labels: Tensor | None) -> Tensor | None:
        if labels is not None:
            raise TypeError(f"{type(self).__name__} takes no labels")
        return None


class MixStyle(StyleAugmentation):
    """MixStyle (Zhou et al., ICLR 2021): mixes each image's feature statistics with those of a partner image.

    Per call (in training, with probability ``p``): ``lam ~ Beta(alpha, alpha)`` per image and a partner index
    ``perm``, then :func:`styleda_fast.nn.functional.mix_style` (statistics detached, ``sig = sqrt(var + eps)``).

    Args:
        p: probability of acting on a call.
        alpha: Beta concentration (> 0).
        eps: added to the variance.
        mix: ``"random"`` (partner = a random permutation of the batch) or ``"crossdomain"`` (the batch is two
            domains, first half and second half; partners come from the other half, see
            :func:`~styleda_fast.nn.functional.crossdomain_permutation` for odd batches).
        generator: ``torch.Generator``, int seed, or ``None`` (torch's global generator). Draws: coin (when
            ``p < 1``), ``lam`` (B), then the permutation.
    """

    _exact_identity = True

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, mix: str = "random", generator=None):
        super().__init__(p, generator)
        self.alpha = _check_positive(alpha, "alpha")
        self.eps = F.check_eps(eps)
        if mix not in ("random", "crossdomain"):
            raise ValueError(f"mix must be 'random' or 'crossdomain', got {mix!r}")
        self.mix = mix

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}, eps={self.eps}, mix={self.mix!r}, {self._common_repr()}"

    def _draw_params(self, batch, channels, labels):
        device = self._draw_device()
        lam = F.beta_weights(self.alpha, self.alpha, (batch,), self.generator, device)
        if self.mix == "random":
            perm = torch.randperm(batch, generator=self.generator, device=device)
        else:
            perm = F.crossdomain_permutation(batch, self.generator, device)
        return perm, lam

    def _identity_draws(self, batch, channels):
        device = self._draw_device()
        return torch.arange(batch, device=device), torch.ones(batch, device=device)

    def _augment(self, x, draws):
        perm, lam = draws
        return F.mix_style(x, perm, lam, self.eps)


class PermutedAdaIN(StyleAugmentation):
    """PermutedAdaIN (Nuriel et al., CVPR 2021): AdaIN of each image toward a random other image's statistics.

    Per call (in training, with probability ``p``): ``perm = randperm(B)`` (an image may draw itself), then
    :func:`styleda_fast.nn.functional.permuted_adain` (partner statistics detached, own differentiated).

    Args:
        p: probability of acting on a call (the public default is 0.01).
        eps: added to the variance.
        eps_after_sqrt: also add ``eps`` to the own std after the square root, as the public code does (default
            ``False``: one ``sqrt(var + eps)`` everywhere; the difference is a relative ``eps / sig``).
        generator: ``torch.Generator``, int seed, or ``None``. Draws: coin (when ``p < 1``), then the permutation.
    """

    def __init__(self, p: float = 0.01, eps: float = 1e-5, eps_after_sqrt: bool = False, generator=None):
        super().__init__(p, generator)
        self.eps = F.check_eps(eps)
        if not isinstance(eps_after_sqrt, bool):
            raise TypeError(f"eps_after_sqrt must be a bool, got {type(eps_after_sqrt).__name__}")
        self.eps_after_sqrt = eps_after_sqrt

    def extra_repr(self) -> str:
        extra = ", eps_after_sqrt=True" if self.eps_after_sqrt else ""
        return f"p={self.p}, eps={self.eps}{extra}, {self._common_repr()}"

    def _draw_params(self, batch, channels, labels):
        return (torch.randperm(batch, generator=self.generator, device=self._draw_device()),)

    def _identity_draws(self, batch, channels):
        return (torch.arange(batch, device=self._draw_device()),)

    def _augment(self, x, draws):
        return F.permuted_adain(x, draws[0], self.eps, eps_after_sqrt=self.eps_after_sqrt)


class DistributionUncertainty(StyleAugmentation):
    """DSU (Li et al., ICLR 2022): resamples each image's feature mean and std around their batch spread.

    Per call (in training, with probability ``p``): standard-normal ``noise_mean``, ``noise_std`` of shape
    ``(B, C)``, then :func:`styleda_fast.nn.functional.dsu` (all statistics differentiated; a batch of one has
    batch variance 0).

    Args:
        p: probability of acting on a call.
        eps: added to the variances (spatial and batch).
        generator: ``torch.Generator``, int seed, or ``None``. Draws: coin (when ``p < 1``), ``noise_mean``, then
            ``noise_std``.
    """

    def __init__(self, p: float = 0.5, eps: float = 1e-6, generator=None):
        super().__init__(p, generator)
        self.eps = F.check_eps(eps)

    def extra_repr(self) -> str:
        return f"p={self.p}, eps={self.eps}, {self._common_repr()}"

    def _draw_params(self, batch, channels, labels):
        device = self._draw_device()
        noise_mean = torch.randn((batch, channels), generator=self.generator, device=device)
        noise_std = torch.randn((batch, channels), generator=self.generator, device=device)
        return noise_mean, noise_std

    def _identity_draws(self, batch, channels):
        device = self._draw_device()
        return torch.zeros((batch, channels), device=device), torch.zeros((batch, channels), device=device)

    def _augment(self, x, draws):
        return F.dsu(x, draws[0], draws[1], self.eps)


class StyleBankAugment(StyleAugmentation):
    """PODA/FAMix feature augmentation: (patch-wise) AdaIN toward styles drawn from a :class:`~styleda_fast.StyleBank`.

    Per call (in training, with probability ``p``): a style per image and patch of a ``grid`` (drawn uniformly from
    the whole bank, or, ``class_aware``, from the patch's dominant class in the labels, with FAMix's fallback
    class), mixing weights per (image, channel), then ``local_style_mix(x, mean, std, grid=grid, mix=s,
    activation=activation)``.

    Args:
        bank: the styles (``bank.channels`` must equal the features' C).
        grid: ``g`` or ``(gh, gw)``; 1 is global transfer (PODA), 3 is FAMix's.
        mix: ``"uniform"`` (``s ~ U[0, 1)``, PODA's ``mix=True``), a ``torch.distributions.Beta`` with scalar
            concentrations (FAMix: ``Beta(0.1, 0.1)``), or ``None`` (pure transfer). ``s = 1`` keeps the own style.
        class_aware: draw each patch's style from its dominant class (:func:`~styleda_fast.patch_dominant_class`
            of the labels with ``bank.num_classes`` classes and ``bank.fallback`` as the ignore value, FAMix's
            counting); needs labels, through :meth:`set_labels` or the ``labels=`` argument of the call.
        activation: ``"relu"`` (PODA and FAMix apply it after the transfer) or ``None``.
        p: probability of acting on a call (PODA and FAMix augment every step: 1).
        eps: added to the variance of each patch.
        generator: ``torch.Generator`` on the bank's device, int seed, or ``None``. Draws: coin (when ``p < 1``),
            the styles (one ``torch.rand`` of ``B*gh*gw`` numbers in the bank), then the mixing weights.
    """

    def __init__(
        self,
        bank: StyleBank,
        grid: int | tuple[int, int] = 1,
        mix="uniform",
        class_aware: bool = False,
        activation: str | None = "relu",
        p: float = 1.0,
        eps: float = 1e-5,
        generator=None,
    ):
        if not isinstance(bank, StyleBank):
            raise TypeError(f"bank must be a styleda_fast.StyleBank, got {type(bank).__name__}")
        super().__init__(p, generator, generator_device=bank.device)
        if self.generator is not None and self.generator.device.type != bank.device.type:
            raise ValueError(f"generator must be on the bank's device {bank.device}, got {self.generator.device}")
        self.bank = bank
        self.grid = check_grid(grid)
        if isinstance(mix, torch.distributions.Beta):
            c1, c0 = mix.concentration1, mix.concentration0
            if c1.numel() != 1 or c0.numel() != 1:
                raise ValueError("mix: a Beta distribution must have scalar concentrations")
            self._beta = (float(c1), float(c0))
        elif mix == "uniform" or mix is None:
            self._beta = None
        else:
            raise ValueError(f"mix must be 'uniform', a torch.distributions.Beta or None, got {mix!r}")
        self.mix = mix
        if not isinstance(class_aware, bool):
            raise TypeError(f"class_aware must be a bool, got {type(class_aware).__name__}")
        self.class_aware = class_aware
        if activation not in ("relu", None):
            raise ValueError(f"activation must be 'relu' or None, got {activation!r}")
        self.activation = activation
        self.eps = F.check_eps(eps)
        self.labels: Tensor | None = None

    @classmethod
    def poda(cls, bank: StyleBank, **kwargs) -> StyleBankAugment:
        """PODA's augmentation: global (grid 1), one style per image from the whole bank, ``U[0, 1)`` mixing."""
        return cls(bank, **{"grid": 1, "mix": "uniform", "class_aware": False, **kwargs})

    @classmethod
    def famix(cls, bank: StyleBank, **kwargs) -> StyleBankAugment:
        """FAMix's augmentation: 3x3 patches, styles of each patch's dominant class, ``Beta(0.1, 0.1)`` mixing."""
        beta = torch.distributions.Beta(torch.tensor(0.1), torch.tensor(0.1))
        return cls(bank, **{"grid": 3, "mix": beta, "class_aware": True, **kwargs})

    def extra_repr(self) -> str:
        if self._beta is not None:
            mix = f"Beta({self._beta[0]}, {self._beta[1]})"
        else:
            mix = repr(self.mix)
        return (
            f"{self.bank!r}, grid={self.grid}, mix={mix}, class_aware={self.class_aware}, "
            f"activation={self.activation!r}, p={self.p}, eps={self.eps}, {self._common_repr()}"
        )

    def set_labels(self, labels: Tensor | None) -> None:
        """Label maps ``(B, H, W)`` (train ids, any resolution) for the class-aware draws of the following calls;
        they stay until replaced (set them every step) or cleared with ``None``."""
        if labels is not None:
            _check_labels(labels)
        self.labels = labels

    def _labels_for(self, x: Tensor, labels: Tensor | None) -> Tensor | None:
        if not self.class_aware:
            return None
        if labels is None:
            labels = self.labels
        if labels is None:
            raise ValueError(
                "labels: a class_aware StyleBankAugment needs the step's label maps; call set_labels(labels) "
                "before the forward pass or pass labels="
            )
        _check_labels(labels)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels hold {labels.shape[0]} maps but the features {x.shape[0]} images")
        return labels

    def _draw_device(self) -> torch.device:
        return self.bank.device

    def _draw_params(self, batch, channels, labels):
        if channels != self.bank.channels:
            raise ValueError(f"x has {channels} channels but the bank's styles have {self.bank.channels}")
        gh, gw = self.grid
        if labels is not None:
            dominant = patch_dominant_class(
                labels, (gh, gw), num_classes=self.bank.num_classes, ignore_index=self.bank.fallback
            )
            mean, std = self.bank.sample_grid(dominant, generator=self.generator)
        else:
            mean, std = self.bank.sample_any(batch * gh * gw, generator=self.generator)
            mean = mean.reshape(batch, gh, gw, channels).permute(0, 3, 1, 2).contiguous()
            std = std.reshape(batch, gh, gw, channels).permute(0, 3, 1, 2).contiguous()
        if self.mix is None:
            return mean, std
        if self._beta is not None:
            s = F.beta_weights(self._beta[0], self._beta[1], (batch, channels), self.generator, self.bank.device)
        else:
            s = torch.rand((batch, channels), generator=self.generator, device=self.bank.device)
        return mean, std, s

    def _identity_draws(self, batch, channels):
        gh, gw = self.grid
        device = self.bank.device
        mean = torch.zeros((batch, channels, gh, gw), device=device)
        std = torch.ones((batch, channels, gh, gw), device=device)
        if self.mix is None:
            return mean, std
        return mean, std, torch.ones((batch, channels), device=device)

    def _augment(self, x, draws):
        mean, std = draws[0].to(x.device), draws[1].to(x.device)
        s = draws[2].to(x.device) if len(draws) > 2 else None
        return local_style_mix(x, mean, std, grid=self.grid, mix=s, activation=self.activation, eps=self.eps)


def _check_labels(labels) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W) integer train ids, got {labels.dtype} {tuple(labels.shape)}")
