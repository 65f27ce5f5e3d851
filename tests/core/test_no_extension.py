"""Without the compiled extension (``import styleda_fast._C`` refused by a meta path finder, in a subprocess), every
public function and every nn layer runs forward and backward, in float64, and gives what the package gives with
the extension (issue 22 item 1: MixStyle's backward raised ``AttributeError: ... 'empty_cached_like'``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from helpers import assert_close, has_triton

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# the noise of the C++ kernels agrees with the specification's to a few float32 ulps (ops/text/README.md)
NOISY = ("noisy_text_projection", "noisy_style_features")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def _run(name: str, results: dict, inputs: tuple, forward) -> None:
    """``forward(*leaves)`` and the gradient of every floating leaf through a fixed random weighting."""
    leaves = [_leaf(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    outputs = forward(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator().manual_seed(len(name))
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs if o.is_floating_point())
    wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted and torch.is_tensor(loss) else ()
    results[name] = [o.detach() for o in outputs] + [g for g in grads if g is not None]
    assert len(grads) == sum(g is not None for g in grads), f"{name}: an input got no gradient"


def compute() -> dict[str, list[torch.Tensor]]:
    """Every public function and layer, forward and backward, on fixed float64 inputs."""
    import styleda_fast as sf
    from styleda_fast.nn import (
        DistributionUncertainty,
        MixStyle,
        PatchTokens,
        PermutedAdaIN,
        StyleBankAugment,
        functional,
    )

    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    x = randn(4, 3, 7, 9) * 2 + 1
    B, C = x.shape[:2]
    sm, ss, mix = randn(B, C, 2, 2), randn(B, C, 2, 2).abs() + 0.5, torch.rand(B, C, generator=gen, dtype=x.dtype)
    labels = torch.randint(0, 4, (B, 7, 9), generator=gen)
    labels[:, 0, 0] = 255
    bank = sf.StyleBank(C, num_classes=4, class_names=("a", "b", "c", "d"))
    bank.add(randn(10, C).float() + 1, randn(10, C).abs().float() + 0.5, [0, 1, 2, 3, 255, 0, 1, 2, 3, 255])
    results: dict[str, list[torch.Tensor]] = {}

    _run("patch_mean_std", results, (x,), lambda x: sf.patch_mean_std(x, (2, 3)))
    _run("local_style_mix", results, (x, sm, ss, mix),
         lambda x, sm, ss, mix: sf.local_style_mix(x, sm, ss, grid=2, mix=mix))  # fmt: skip
    with torch.no_grad():
        out = torch.empty_like(x)
        sf.local_style_mix(x, sm, ss, grid=2, mix=mix, activation=None, out=out)
        results["local_style_mix_out"] = [out]
        results["patch_dominant_class"] = [sf.patch_dominant_class(labels, 3, num_classes=4)]
        results["labels_to_size"] = [sf.labels_to_size(labels, (4, 5))]
    _run("class_mean_std", results, (x,), lambda x: sf.class_mean_std(x, labels, 4)[:2])
    _run(
        "noisy_text_projection", results, (randn(3, 8),), lambda t: sf.noisy_text_projection(t, 0.2, samples=2, seed=3)
    )
    _run("clip_cosine_loss", results, (randn(4, 8), randn(4, 8)), sf.clip_cosine_loss)
    _run("noisy_style_features", results, (randn(2, 3, 4, 5), randn(2, 3), randn(2, 3).abs()),
         lambda xn, m, s: sf.noisy_style_features(xn, m, s, 0.1, seed=5))  # fmt: skip
    tokens = randn(B, 1 + 3 * 4, C)
    _run("tokens", results, (tokens,), lambda t: sf.grid_as_tokens(sf.tokens_as_grid(t, 3, 4) * 2, t[:, :1]))

    perm = torch.tensor([2, 0, 3, 1])
    _run("mix_style", results, (x,), lambda x: functional.mix_style(x, perm, torch.tensor([0.2, 0.9, 0.5, 1.0])))
    _run("permuted_adain", results, (x,), lambda x: functional.permuted_adain(x, perm, eps_after_sqrt=True))
    _run("dsu", results, (x,), lambda x: functional.dsu(x, randn(B, C), randn(B, C)))
    layers = {
        "MixStyle": MixStyle(p=1.0, generator=1),
        "MixStyle_crossdomain": MixStyle(p=1.0, mix="crossdomain", generator=1),
        "PermutedAdaIN": PermutedAdaIN(p=1.0, generator=2),
        "DistributionUncertainty": DistributionUncertainty(p=1.0, generator=3),
        "StyleBankAugment_poda": StyleBankAugment.poda(bank, generator=4),
        "StyleBankAugment_famix": StyleBankAugment.famix(bank, generator=5),
    }
    for name, layer in layers.items():
        layer.train()
        if name.endswith("famix"):
            _run(name, results, (x,), lambda x, layer=layer: layer(x, labels))
        else:
            _run(name, results, (x,), layer)
    wrapped = PatchTokens(MixStyle(p=1.0, generator=6), prefix=1, grid=(3, 4)).train()
    _run("PatchTokens_MixStyle", results, (tokens,), wrapped)
    return results


SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, warnings

    class RefuseExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "styleda_fast._C":
                raise ImportError("styleda_fast._C refused by the test")
            return None

    sys.meta_path.insert(0, RefuseExtension())
    warnings.simplefilter("ignore")
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import torch
    import styleda_fast
    from styleda_fast.core.extension import CPP_PROBLEM
    assert CPP_PROBLEM is not None and "refused by the test" in CPP_PROBLEM, CPP_PROBLEM
    assert not hasattr(torch.ops.styleda_fast, "patch_mean_std")
    import test_no_extension
    results = {}
    for backend in sys.argv[4:]:
        if backend == "default":
            results[backend] = test_no_extension.compute()
        else:
            with styleda_fast.use_backend(backend):
                results[backend] = test_no_extension.compute()
    torch.save(results, sys.argv[3])
    """
)


def test_every_function_and_layer_runs_forward_and_backward_without_the_extension(tmp_path):
    modes = ["default"] + (["triton"] if has_triton() and not torch.cuda.is_available() else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1")
    path = tmp_path / "results.pt"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(HERE), str(HERE.parent), str(path), *modes],
        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    blocked = torch.load(path)
    expected = compute()  # here with the extension (when it is built): the kernels' results
    for mode, results in blocked.items():
        assert results.keys() == expected.keys()
        for name, tensors in results.items():
            assert len(tensors) == len(expected[name]), f"{mode} {name}: outputs and gradients differ in number"
            for got, want in zip(tensors, expected[name]):
                if not got.is_floating_point():
                    assert torch.equal(got, want), f"{mode} {name}"
                else:
                    assert_close(got, want, 1e-5 if name in NOISY else 1e-9, f"{mode} {name}")
