"""Reference state_dicts <-> tr_jax variables for every architecture.

Where torch is installed, forward passes are checked against small PyTorch re-implementations of the
reference's ``models/cifar/{preresnet,vgg,densenet}.py`` (same modules, names and forward).
"""
import fractions
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax.models import from_torch, to_torch
from tr_jax.models.torch_import import expected_shapes, guess_arch
from tr_jax.models.vgg import CONFIGS

SMALL = [("preresnet", 8), ("vgg", 11), ("vgg_bn", 11), ("densenet", 10)]
# len(state_dict()) of the reference modules (num_batches_tracked included)
N_KEYS = {("preresnet", 8): 46, ("vgg", 11): 18, ("vgg_bn", 11): 58, ("densenet", 10): 56}


def _random_variables(arch, depth, num_classes=10, width=1.0, seed=0):
    """Variables with every leaf random (BN stats too), activations O(1): no jitted init."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "var":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        std = np.sqrt(2.0 / np.prod(s.shape[:-1])) if name == "kernel" else 0.1
        return (std * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(
        fill, expected_shapes(arch, depth, num_classes, width))


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("arch,depth", SMALL)
def test_round_trip(arch, depth):
    v = _random_variables(arch, depth)
    sd = to_torch(v, arch, depth)
    assert len(sd) == N_KEYS[(arch, depth)]
    _assert_same(from_torch(sd, arch, depth), v)
    assert guess_arch(sd) == {"arch": arch, "depth": depth, "num_classes": 10, "width": 1.0}


def test_reference_key_names_and_layouts():
    pre = to_torch(_random_variables("preresnet", 8, width=0.5), "preresnet", 8, width=0.5)
    assert pre["layer2.0.downsample.0.weight"].shape == (16, 8, 1, 1)  # OIHW
    assert pre["layer1.0.conv1.weight"].shape == (8, 8, 3, 3)
    assert pre["fc.weight"].shape == (10, 32)  # [out, in]
    tracked = pre["bn.num_batches_tracked"]
    assert tracked.dtype == np.int64 and tracked.ndim == 0
    v = _random_variables("vgg_bn", 11)
    vgg = to_torch(v, "vgg_bn", 11)
    assert vgg["features.4.weight"].shape == (128, 64, 3, 3)
    assert vgg["features.4.bias"].shape == vgg["features.5.running_var"].shape == (128,)
    np.testing.assert_array_equal(vgg["features.5.running_var"],
                                  v["batch_stats"]["features_5"]["var"])
    np.testing.assert_array_equal(vgg["features.4.weight"][3, 2, 1, 0],
                                  v["params"]["features_4"]["kernel"][1, 0, 2, 3])
    dense = to_torch(_random_variables("densenet", 10), "densenet", 10)
    assert dense["dense1.1.conv1.weight"].shape == (12, 36, 3, 3)
    assert dense["trans2.conv1.weight"].shape == (72, 72, 1, 1)
    assert "trans2.bn1.num_batches_tracked" in dense and dense["fc.weight"].shape == (10, 96)


def test_module_prefix_and_npz(tmp_path):
    v = _random_variables("densenet", 10)
    sd = {"module." + k: a for k, a in to_torch(v, "densenet", 10).items()}
    _assert_same(from_torch(sd, "densenet", 10), v)
    np.savez(tmp_path / "dense.npz", **sd)
    _assert_same(from_torch(tmp_path / "dense.npz", "densenet", 10), v)


def _pruned(sd, rng):
    """PyTorch-prune style copy of a state_dict: random masks on convs, all ones on the Linear."""
    out = {}
    for k, a in sd.items():
        if k.endswith(".weight") and a.ndim in (2, 4):
            out[k + "_orig"] = a
            out[k + "_mask"] = (rng.uniform(size=a.shape) < 0.3 if a.ndim == 4
                                else np.ones(a.shape)).astype(np.float32)
        else:
            out[k] = a
    return out


def test_pruned_checkpoint_gives_masks():
    v = _random_variables("vgg_bn", 11)
    pruned = _pruned(to_torch(v, "vgg_bn", 11), np.random.default_rng(1))
    got, masks = from_torch(pruned, "vgg_bn", 11, return_masks=True)
    assert jax.tree.structure(masks) == jax.tree.structure(v["params"])
    m4 = masks["features_4"]["kernel"]
    np.testing.assert_array_equal(m4, pruned["features.4.weight_mask"].transpose(2, 3, 1, 0))
    assert 0.2 < m4.mean() < 0.4
    np.testing.assert_array_equal(got["params"]["features_4"]["kernel"],
                                  v["params"]["features_4"]["kernel"] * m4)
    for name in ("bias",):
        assert np.all(masks["features_4"][name] == 1) and np.all(masks["features_5"][name] == 1)
    assert np.all(masks["classifier"]["kernel"] == 1) and np.all(masks["features_5"]["scale"] == 1)
    # back out again, PyTorch-prune style: X.weight_orig / X.weight_mask for every conv and Linear
    again = to_torch(got, "vgg_bn", 11, masks=masks)
    assert set(again) == set(pruned)
    np.testing.assert_array_equal(again["features.4.weight_mask"], pruned["features.4.weight_mask"])
    _assert_same(from_torch(again, "vgg_bn", 11, return_masks=True), (got, masks))
    with pytest.warns(UserWarning, match="return_masks=True"):
        from_torch(pruned, "vgg_bn", 11)
    _, ones = from_torch(to_torch(v, "vgg_bn", 11), return_masks=True)  # unpruned: all ones
    assert all(np.all(x == 1) for x in jax.tree.leaves(ones))


def test_checkpoint_of_another_architecture_raises():
    vgg = to_torch(_random_variables("vgg_bn", 11), "vgg_bn", 11)
    with pytest.raises(ValueError) as e:
        from_torch(vgg, "preresnet", depth=20)
    msg = str(e.value)
    for part in ("arch='preresnet'", "missing keys", "conv1.weight", "unexpected keys",
                 "features.0.weight", "looks like arch='vgg_bn', depth=11"):
        assert part in msg, msg
    dense = to_torch(_random_variables("densenet", 10), "densenet", 10)
    with pytest.raises(ValueError, match=r"missing keys \(dense1\.2\.bn1\.bias.*depth=10"):
        from_torch(dense, "densenet", depth=13)
    pre = to_torch(_random_variables("preresnet", 8), "preresnet", 8)
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \(10, 64\) vs model \(100, 64\)"):
        from_torch(pre, "preresnet", depth=8, num_classes=100)
    with pytest.raises(ValueError, match="shape mismatches"):
        from_torch(pre, "preresnet", depth=8, width=0.5)
    with pytest.raises(ValueError, match="missing keys"):
        to_torch(from_torch(vgg), "vgg", depth=11)  # BN checkpoint into the BN-less VGG


def test_reading_a_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    (tmp_path / "checkpoint.pth.tar").write_bytes(b"not read")  # a missing file: "no such file"
    with pytest.raises(ImportError, match=r"pip install tr_jax\[torch\]"):
        from_torch(tmp_path / "checkpoint.pth.tar")


def test_torch_is_not_imported_with_tr_jax():
    code = "import sys, tr_jax.models.torch_import; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- with torch

def _torch_reference(arch, depth, num_classes=10):
    """The reference's CIFAR model (same module names and forward), built with torch."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class PreBlock(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(inplanes), nn.BatchNorm2d(planes)
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False))
                               if stride != 1 or inplanes != planes else None)

        def forward(self, x):
            out = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
            return out + (x if self.downsample is None else self.downsample(x))

    class PreResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            inplanes = 16
            for s, planes in enumerate((16, 32, 64)):
                blocks = [PreBlock(inplanes if b == 0 else planes, planes,
                                   2 if s > 0 and b == 0 else 1) for b in range(n)]
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
                inplanes = planes
            self.bn, self.fc = nn.BatchNorm2d(64), nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
            x = nn.AvgPool2d(8)(torch.relu(self.bn(x)))
            return self.fc(x.flatten(1))

    class VGG(nn.Module):
        def __init__(self, batch_norm):
            super().__init__()
            layers, c = [], 3
            for v in CONFIGS[depth]:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                    continue
                layers.append(nn.Conv2d(c, v, 3, padding=1))
                layers += [nn.BatchNorm2d(v), nn.ReLU()] if batch_norm else [nn.ReLU()]
                c = v
            self.features, self.classifier = nn.Sequential(*layers), nn.Linear(512, num_classes)

        def forward(self, x):
            return self.classifier(nn.AvgPool2d(2)(self.features(x)).flatten(1))

    class DenseLayer(nn.Module):
        def __init__(self, inplanes):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes)
            self.conv1 = nn.Conv2d(inplanes, 12, 3, padding=1, bias=False)

        def forward(self, x):
            return torch.cat((x, self.conv1(torch.relu(self.bn1(x)))), 1)

    class Transition(nn.Module):
        def __init__(self, inplanes):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes)
            self.conv1 = nn.Conv2d(inplanes, inplanes, 1, bias=False)

        def forward(self, x):
            return nn.functional.avg_pool2d(self.conv1(torch.relu(self.bn1(x))), 2)

    class DenseNet(nn.Module):
        def __init__(self):
            super().__init__()
            n, c = (depth - 4) // 3, 24
            self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
            for block in (1, 2, 3):
                setattr(self, f"dense{block}", nn.Sequential(
                    *[DenseLayer(c + 12 * i) for i in range(n)]))
                c += 12 * n
                if block < 3:
                    setattr(self, f"trans{block}", Transition(c))
            self.bn, self.fc = nn.BatchNorm2d(c), nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.trans2(self.dense2(self.trans1(self.dense1(self.conv1(x)))))
            x = nn.AvgPool2d(8)(torch.relu(self.bn(self.dense3(x))))
            return self.fc(x.flatten(1))

    if arch == "preresnet":
        return PreResNet()
    if arch == "densenet":
        return DenseNet()
    return VGG(arch == "vgg_bn")


def _load(model, sd):
    import torch
    model.load_state_dict({k: torch.from_numpy(a) for k, a in sd.items()}, strict=True)
    return model


@pytest.mark.parametrize("arch,depth", SMALL)
def test_forward_matches_torch_reference(arch, depth):
    torch = pytest.importorskip("torch")
    v = _random_variables(arch, depth)
    ref = _load(_torch_reference(arch, depth), to_torch(v, arch, depth))
    x = np.random.default_rng(2).standard_normal((4, 32, 32, 3)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        want_eval = ref.eval()(xt).numpy()
        want_train = ref.train()(xt).numpy()  # batch stats; running stats: momentum 0.1, unbiased
    m = tj.models.build(arch, depth=depth)
    np.testing.assert_allclose(tj.models.apply(m, v, jnp.asarray(x)), want_eval, atol=1e-4)
    logits, v2 = tj.models.apply(m, v, jnp.asarray(x), train=True)
    np.testing.assert_allclose(logits, want_train, atol=1e-4)
    after = from_torch(ref.state_dict(), arch, depth)["batch_stats"]
    assert jax.tree.structure(after) == jax.tree.structure(v2["batch_stats"])
    for a, b in zip(jax.tree.leaves(v2["batch_stats"]), jax.tree.leaves(after)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_pruned_export_loads_into_torch_prune_and_pth_tar(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    v = _random_variables("preresnet", 8)
    masks = tj.pruning.magnitude_masks(v["params"], 0.3)
    ref = _torch_reference("preresnet", 8)
    for mod in ref.modules():  # the reference's prune_weights_reparam: every conv and Linear
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.identity(mod, "weight")
    _load(ref, to_torch(v, "preresnet", 8, masks=masks))
    x = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    masked = {"params": jax.tree.map(lambda p, k: p * k, v["params"], masks),
              "batch_stats": v["batch_stats"]}
    m = tj.models.preresnet(8)
    np.testing.assert_allclose(tj.models.apply(m, masked, jnp.asarray(x)), want, atol=1e-4)
    # the reference saves {'epoch', 'state_dict' (DataParallel: module.*), ...} as .pth.tar
    path = tmp_path / "pruned.pth.tar"
    sd = {"module." + k: t for k, t in ref.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd, "acc": 91.5}, path)
    got, got_masks = from_torch(str(path), "preresnet", 8, return_masks=True)
    _assert_same(got_masks, jax.tree.map(np.asarray, masks))
    _assert_same(got["params"], jax.tree.map(np.asarray, masked["params"]))
    torch.save(ref.state_dict(), tmp_path / "plain.pth")
    _assert_same(from_torch(tmp_path / "plain.pth", return_masks=True), (got, got_masks))
    torch.save({"state_dict": sd, "acc": fractions.Fraction(1, 3)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="weights_only"):  # never unpickles arbitrary objects
        from_torch(tmp_path / "odd.pth")


def test_unexpected_keys_of_unknown_shape_are_named_not_a_keyerror():
    """A state_dict with extra entries such as ``after_train/layer1.0.bn1.running_mean`` (a
    second copy of BN statistics under a foreign prefix) used to crash with KeyError: 'mean'
    inside check_structure; the error must name the unexpected keys."""
    sd = to_torch(_random_variables("preresnet", 8), "preresnet", 8)
    extra = dict(sd)
    extra["after_train/layer1.0.bn1.running_mean"] = np.zeros(16, np.float32)
    extra["after_train/layer1.0.bn1.running_var"] = np.ones(16, np.float32)
    with pytest.raises(ValueError) as e:
        from_torch(extra, "preresnet", depth=8)
    msg = str(e.value)
    assert "2 unexpected keys" in msg and "missing keys" not in msg, msg
    for key in ("after_train/layer1.0.bn1.running_mean", "after_train/layer1.0.bn1.running_var"):
        assert key in msg, msg
    from_torch(sd, "preresnet", depth=8)  # the clean one still loads
