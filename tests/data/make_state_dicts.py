"""Writes the state-dict fixtures tests/test_state_dict.cpp reads (tests/data/state_dicts/).

Run with Debian's PyTorch (python3-torch 1.13, the LibTorch pipe links), from the repository root:

    /usr/bin/python3 tests/data/make_state_dicts.py

What Python's torch.save(model.state_dict()) writes is a collections.OrderedDict, pickled in
one of two containers; pipe reads both (stages/torch_pickle.h):

  ordered_zip.pth      zip archive (PyTorch >= 1.6's default): data.pkl + data/<key>
  ordered_legacy.pth   legacy stream (_use_new_zipfile_serialization=False): magic number,
                       protocol, sys_info, data pickles, storage keys, raw storages
  rebuild_v1.pth       legacy, with each tensor pickled as torch._utils._rebuild_tensor(storage,
                       offset, size, stride), as PyTorch before 0.4 wrote it (torchvision's
                       vgg16-397923af.pth is such a file)
  expected.pt          the same tensors, contiguous, in a plain dict: what LibTorch's own
                       torch::pickle_load reads, so the test's expected values do not come
                       from the reader under test

The dict is a tiny conv net's (conv 3->4 3x3, batch norm, conv 4->2 1x1 without bias: the
module test_state_dict builds) plus tensors that share one storage: "extra.base" (4 x 6),
"extra.view" = base[1:3, 2:5] (storage offset 8), "extra.t" = base.t() (strides 1, 6), and
"extra.double" (float64). Seeded: a rerun writes the same values.
"""
import collections
import copyreg
import io
import os
import pickle

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state_dicts")


def state_dict():
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1, bias=False))
    bn = net[1]
    with torch.no_grad():  # batch-norm statistics that are not the init's 0 / 1
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    bn.num_batches_tracked.fill_(7)
    sd = net.state_dict()  # an OrderedDict, with _metadata
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8 - 1
    sd["extra.base"] = base
    sd["extra.view"] = base[1:3, 2:5]
    sd["extra.t"] = base.t()
    sd["extra.double"] = torch.linspace(-2, 3, 5, dtype=torch.float64)
    return sd


def rebuild_v1_pickle_module():
    """pickle, with tensors reduced to torch._utils._rebuild_tensor (PyTorch < 0.4)."""

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, torch.Tensor):
                return (torch._utils._rebuild_tensor,
                        (obj.storage(), obj.storage_offset(), tuple(obj.size()), obj.stride()))
            return NotImplemented

    module = type(pickle)("pickle_v1")
    module.__dict__.update(pickle.__dict__)
    module.Pickler = Pickler
    return module


def main():
    os.makedirs(OUT, exist_ok=True)
    sd = state_dict()
    assert isinstance(sd, collections.OrderedDict)
    torch.save(sd, os.path.join(OUT, "ordered_zip.pth"))
    torch.save(sd, os.path.join(OUT, "ordered_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(sd, os.path.join(OUT, "rebuild_v1.pth"), pickle_module=rebuild_v1_pickle_module(),
               _use_new_zipfile_serialization=False)
    torch.save({k: v.contiguous().clone() for k, v in sd.items()}, os.path.join(OUT, "expected.pt"))
    for name in sorted(os.listdir(OUT)):  # each file round-trips through torch.load
        loaded = torch.load(os.path.join(OUT, name))
        assert list(loaded) == list(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd), name
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
