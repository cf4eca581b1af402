// The fp32 GEMM precision policy of the GEMM-based operators (ctal_affinity, cka), shared by their CPU and CUDA
// operators: exact IEEE fp32 by default, whatever PyTorch's global fp32 matmul setting says
// (torch.backends.cuda.matmul.allow_tf32, torch.set_float32_matmul_precision("high" / "medium")), because their
// GEMMs sum over many pixels / subtract nearly equal moments and a TF32 or bf16 operand rounding (2^-11, 2^-8)
// puts the result far outside the fp32 tolerance. With the operator's allow_tf32 = true nothing is changed: the
// GEMMs then follow the global setting (TF32 tensor cores where PyTorch's flag enables them).
//
// How the exact mode is enforced, scoped to the operator call (RAII):
//   * at::NoTF32Guard (thread-local): the cuBLAS handle's math mode, which is how ATen's fp32 GEMMs reach TF32 on
//     its default BLAS backend (cuBLAS). No global state is touched.
//   * Paths that read the global flag itself are switched globally for the call and restored afterwards: cuBLASLt
//     (torch.backends.cuda.preferred_blas_library("cublaslt")), whose compute type follows allowTF32CuBLAS(), and
//     on the CPU oneDNN's bf16 GEMMs under set_float32_matmul_precision("medium"). The switch uses only the
//     long-standing legacy API (allowTF32CuBLAS / setAllowTF32CuBLAS / float32MatmulPrecision /
//     setFloat32MatmulPrecision, in torch since 1.12), not the fp32_precision API whose C++ form keeps changing.
//     It is process-wide, under a mutex with a holder count: the first call that needs it saves and switches,
//     the last one to leave restores, so concurrent operator calls never restore under each other. Other threads'
//     GEMMs meanwhile run in exact fp32 too (harmless); a thread that changes the global setting during the call
//     has its change undone at the restore. A "high" state is switched with setAllowTF32CuBLAS(false/true), which
//     touches only the CUDA matmul setting (exact round trip); "medium" with setFloat32MatmulPrecision
//     ("highest"/"medium"), exact for the state that set_float32_matmul_precision("medium") leaves. (Where
//     set_float32_matmul_precision("high") also set oneDNN's fp32 precision to tf32, as torch 2.14 does, the
//     switched state is one that PyTorch's Python getter torch.get_float32_matmul_precision() rejects until the
//     restore; the BLAS paths read allowTF32CuBLAS(), which is consistent. Only cuBLASLt users see that.) A state that
//     PyTorch's own legacy getter rejects (legacy and new fp32_precision API mixed) is left alone: there only the
//     thread-local guard applies.
#pragma once
#include <ATen/Context.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include <mutex>
#include <optional>

namespace mtl_ops {

namespace fp32_matmul_detail {

struct GlobalSwitch {
  std::mutex mutex;
  int holders = 0;
  at::Float32MatmulPrecision saved = at::Float32MatmulPrecision::HIGHEST;
};

inline GlobalSwitch& global_switch() {
  static GlobalSwitch s;
  return s;
}

// The legacy global precision, or nullopt where PyTorch's getter rejects the state (mixed legacy / new API).
inline std::optional<at::Float32MatmulPrecision> legacy_precision() {
  try {
    return at::globalContext().float32MatmulPrecision();
  } catch (const c10::Error&) {
    return std::nullopt;
  }
}

// Whether exact fp32 on `device` needs the global switch from precision p (see the header comment).
inline bool needs_global_switch(at::Float32MatmulPrecision p, c10::DeviceType device) {
  if (p == at::Float32MatmulPrecision::HIGHEST) return false;
  if (device == c10::DeviceType::CPU) return p == at::Float32MatmulPrecision::MEDIUM;
  if (device == c10::DeviceType::CUDA) {
    try {
      return at::globalContext().blasPreferredBackend() == at::BlasBackend::Cublaslt;
    } catch (const c10::Error&) {
      return true;  // cannot tell which BLAS will run: switch
    }
  }
  return false;
}

inline void set_highest(at::Float32MatmulPrecision from) {
  if (from == at::Float32MatmulPrecision::HIGH)
    at::globalContext().setAllowTF32CuBLAS(false);
  else
    at::globalContext().setFloat32MatmulPrecision("highest");
}

inline void restore(at::Float32MatmulPrecision to) {
  if (to == at::Float32MatmulPrecision::HIGH)
    at::globalContext().setAllowTF32CuBLAS(true);
  else if (to == at::Float32MatmulPrecision::MEDIUM)
    at::globalContext().setFloat32MatmulPrecision("medium");
}

}  // namespace fp32_matmul_detail

// Scope of one operator call: exact fp32 GEMMs inside when !allow_tf32 (see above); a no-op when allow_tf32.
class Fp32MatmulPrecisionGuard {
 public:
  Fp32MatmulPrecisionGuard(bool allow_tf32, c10::DeviceType device) {
    if (allow_tf32) return;
    no_tf32_.emplace();
    auto& sw = fp32_matmul_detail::global_switch();
    std::lock_guard<std::mutex> lock(sw.mutex);
    if (sw.holders > 0) {  // already switched by a call in flight: hold it so it is not restored under this one
      ++sw.holders;
      holder_ = true;
      return;
    }
    const auto p = fp32_matmul_detail::legacy_precision();
    if (!p || !fp32_matmul_detail::needs_global_switch(*p, device)) return;
    fp32_matmul_detail::set_highest(*p);
    sw.saved = *p;
    sw.holders = 1;
    holder_ = true;
  }

  ~Fp32MatmulPrecisionGuard() {
    if (!holder_) return;
    auto& sw = fp32_matmul_detail::global_switch();
    std::lock_guard<std::mutex> lock(sw.mutex);
    if (--sw.holders > 0) return;
    try {
      fp32_matmul_detail::restore(sw.saved);
    } catch (...) {  // a destructor must not throw; the setters do not for these arguments
    }
  }

  Fp32MatmulPrecisionGuard(const Fp32MatmulPrecisionGuard&) = delete;
  Fp32MatmulPrecisionGuard& operator=(const Fp32MatmulPrecisionGuard&) = delete;

 private:
  std::optional<at::NoTF32Guard> no_tf32_;
  bool holder_ = false;
};

}  // namespace mtl_ops
