# adam_update / ema_update (reference: kernels/reference.py): one pass over a parameter's arrays
# where the NumPy reference makes about ten, each with a temporary. The arithmetic is the
# reference's, operation for operation and in the parameter's type (scalars rounded to it
# first, as NumPy does), so the results agree bit for bit.

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>

    /* Adam (Kingma & Ba 2015, Alg. 1), weight decay as L2 on the gradient; correction1/2 are
       the bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ. */
    #define MINIDIFF_ADAM(T, NAME, SQRT)                                                         \\
    MINIDIFF_CLONES static void NAME(T *restrict param, const T *restrict grad, T *restrict m,     \\
                                     T *restrict v, ptrdiff_t len, T lr, T beta1, T one_minus_beta1, \\
                                     T beta2, T one_minus_beta2, T correction1, T correction2,      \\
                                     T eps, T weight_decay) {                                       \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            const T g = weight_decay != 0 ? grad[k] + weight_decay * param[k] : grad[k];         \\
            m[k] = m[k] * beta1 + one_minus_beta1 * g;                                           \\
            v[k] = v[k] * beta2 + (one_minus_beta2 * g) * g;                                     \\
            param[k] = param[k] - lr * (m[k] / correction1) / (SQRT(v[k] / correction2) + eps);  \\
        }                                                                                        \\
    }

    /* θ̄ ← θ̄ − (1 − d)(θ̄ − θ) */
    #define MINIDIFF_EMA(T, NAME)                                                                \\
    MINIDIFF_CLONES static void NAME(T *restrict average, const T *restrict param, ptrdiff_t len,  \\
                                     T one_minus_decay) {                                          \\
        for (ptrdiff_t k = 0; k < len; k++) average[k] = average[k] - one_minus_decay * (average[k] - param[k]); \\
    }

    MINIDIFF_ADAM(float, adam_update_f, sqrtf)
    MINIDIFF_ADAM(double, adam_update_d, sqrt)
    MINIDIFF_EMA(float, ema_update_f)
    MINIDIFF_EMA(double, ema_update_d)
    """
    void adam_update_f(float* param, const float* grad, float* m, float* v, Py_ssize_t length, float lr,
                       float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                       float correction1, float correction2, float eps, float weight_decay) noexcept nogil
    void adam_update_d(double* param, const double* grad, double* m, double* v, Py_ssize_t length, double lr,
                       double beta1, double one_minus_beta1, double beta2, double one_minus_beta2,
                       double correction1, double correction2, double eps, double weight_decay) noexcept nogil
    void ema_update_f(float* average, const float* param, Py_ssize_t length, float one_minus_decay) noexcept nogil
    void ema_update_d(double* average, const double* param, Py_ssize_t length, double one_minus_decay) noexcept nogil


def adam_update(real[::1] param, const real[::1] grad, real[::1] m, real[::1] v, double lr, double beta1,
                double beta2, double correction1, double correction2, double eps, double weight_decay):
    """One Adam step in place on flat, contiguous param, m and v."""
    cdef Py_ssize_t length = param.shape[0]
    if length == 0:
        return
    with nogil:
        if real is float:
            adam_update_f(&param[0], &grad[0], &m[0], &v[0], length, <float> lr, <float> beta1, <float> (1 - beta1),
                          <float> beta2, <float> (1 - beta2), <float> correction1, <float> correction2, <float> eps,
                          <float> weight_decay)
        else:
            adam_update_d(&param[0], &grad[0], &m[0], &v[0], length, lr, beta1, 1 - beta1, beta2, 1 - beta2,
                          correction1, correction2, eps, weight_decay)


def ema_update(real[::1] average, const real[::1] param, double one_minus_decay):
    """θ̄ ← θ̄ − (1 − d)(θ̄ − θ) in place on a flat, contiguous average."""
    cdef Py_ssize_t length = average.shape[0]
    if length == 0:
        return
    with nogil:
        if real is float:
            ema_update_f(&average[0], &param[0], length, <float> one_minus_decay)
        else:
            ema_update_d(&average[0], &param[0], length, one_minus_decay)
