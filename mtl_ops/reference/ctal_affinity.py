"""Reference definition of CTAL's cross-task affinity core (EMA-Net), the literal naive computation.

It materialises, per sample, the T cosine Gram matrices A_t (N x N), their interleaved stack (T*N channels
over the key grid) and the fused matrix M (N x N): the memory the fused backends remove. The oracle for
every backend of ``mtl_ops.ops.ctal_affinity``.
"""
import torch
import torch.nn.functional as F


def ctal_affinity(x: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    """``r_t = gamma * V_t M^T + (1 - gamma) * x_t`` with M the grouped k x k mixing of the cosine Grams.

    x, v: (B, T, C, H, W). weight: (N, T, k, k) (one M shared by all tasks) or (T, N, T, k, k) (one M_t
    per task); bias: (N,) or (T, N); N = H * W. Returns (B, T, C, H, W).
    """
    B, T, C, H, W = x.shape
    N = H * W
    k = weight.shape[-1]
    f = F.normalize(x.reshape(B, T, C, N), dim=2, eps=1e-12)
    A = torch.einsum("btci,btcj->bitj", f, f)                          # (B, N, T, N): A_t[i, j], query-major
    X = A.reshape(B, N * T, H, W)                                      # channel i*T + t, a map over key j
    per_task = weight.dim() == 5
    out = []
    for t in range(T):
        if t == 0 or per_task:  # Conv2d(T*N -> N, k, padding=k//2, groups=N): M[b, i, j]
            w, b = (weight[t], bias[t]) if per_task else (weight, bias)
            M = F.conv2d(X, w, b, padding=k // 2, groups=N).reshape(B, N, N)
        Z = torch.bmm(v[:, t].reshape(B, C, N), M.transpose(1, 2)).reshape(B, C, H, W)
        out.append(gamma * Z + (1 - gamma) * x[:, t])
    return torch.stack(out, dim=1)


def ctal_affinity_reassociated(x: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               gamma: float) -> torch.Tensor:
    """The same function by the exact reassociation (a sum over the k*k taps) in plain PyTorch ops with
    autograd: G = V P^T with P the k*k shifted copies of the normalised features, Z = sum_d G_d Q_d. Linear in
    N (it materialises P and Q, k*k*T*C x N each); the bar a careful user reaches without the fused kernels,
    and an oracle at sizes where the naive path does not fit."""
    B, T, C, H, W = x.shape
    N = H * W
    k = weight.shape[-1]
    p = k // 2
    taps = k * k
    f = F.normalize(x.reshape(B, T, C, N), dim=2, eps=1e-12)
    fp = F.pad(f.reshape(B, T * C, H, W), (p, p, p, p))
    P = torch.stack([fp[:, :, ky:ky + H, kx:kx + W] for ky in range(k) for kx in range(k)], 1)  # (B, taps, TC, H, W)
    G = torch.bmm(v.reshape(B, T * C, N), P.reshape(B, taps * T * C, N).transpose(1, 2))     # (B, TC, taps*TC)
    per_task = weight.dim() == 5
    Ws = weight.reshape(T if per_task else 1, N, T, taps).permute(0, 3, 2, 1)                  # (Tw, taps, T, N)
    Q = (Ws[:, None, :, :, None, :] * f[None, :, None]).reshape(Ws.shape[0], B, taps * T * C, N)
    Gt = G.reshape(B, T, C, taps * T * C)
    if per_task:
        Z = torch.stack([torch.bmm(Gt[:, t], Q[t]) for t in range(T)], 1)                      # (B, T, C, N)
    else:
        Z = torch.bmm(G, Q[0]).reshape(B, T, C, N)
    Z = Z + v.reshape(B, T, C, N).sum(3, keepdim=True) * bias.reshape(1, -1, 1, N)
    return (gamma * Z.reshape(x.shape) + (1 - gamma) * x)
