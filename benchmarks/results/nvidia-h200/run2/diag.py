import sys, json, torch
sys.path.insert(0, "tests")
import test_gpu_paths as t
out = {}
op = "routed_primitive_gather"
for layout in ("contiguous", "channels_last"):
    inputs = [t.to_layout(x, layout) for x in t.make_inputs(op, "cuda")]
    res = {}
    for name, fn, ins in (("cuda", t.fused(op, "cuda"), inputs), ("triton", t.fused(op, "triton"), inputs),
                          ("gpu_ref64", t.CASES[op].reference_fn, [x.double() for x in inputs]),
                          ("gpu_ref64_contig", t.CASES[op].reference_fn, [x.double().contiguous() for x in inputs])):
        o, g = t.outputs_and_grads(fn, ins)
        res[name] = o + g
    cpu_o, cpu_g = t.reference_outputs_and_grads(op, inputs)
    cpu = cpu_o + cpu_g
    out[layout] = {name: [round(t.normwise_error(a, b), 8) for a, b in zip(v, cpu)] for name, v in res.items()}
    out[layout]["strides"] = [list(x.stride()) for x in inputs]
print("RPG", json.dumps(out))
# ctal one element: triton and cuda vs a CPU float64 reference at the grid-chunking size
from mtl_ops.ops import ctal_affinity
from mtl_ops.reference import ctal_affinity as ctal_ref
g = torch.Generator().manual_seed(0)
B, T, C, H, W, k = 4100, 4, 1, 1, 2, 3
x, v = torch.randn(B, T, C, H, W, generator=g), torch.randn(B, T, C, H, W, generator=g)
w, b = 0.3 * torch.randn(H * W, T, k, k, generator=g), 0.1 * torch.randn(H * W, generator=g)
ref = ctal_ref(x.double(), v.double(), w.double(), b.double(), 0.3)
for be in ("cuda", "triton"):
    got = ctal_affinity(x.cuda(), v.cuda(), w.cuda(), b.cuda(), 0.3, backend=be).cpu().double()
    d = (got - ref).abs()
    i = int(d.argmax())
    idx = torch.unravel_index(torch.tensor(i), d.shape)
    bi = int(idx[0])
    print("CTAL", be, "max abs", float(d.max()), "at", [int(j) for j in idx], "ref", float(ref.flatten()[i]),
          "x[b]", x[bi].flatten().tolist(), "v[b]", v[bi].flatten().tolist(), "normwise", t.normwise_error(got, ref))
