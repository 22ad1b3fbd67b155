# softmax_forward / softmax_backward over the last axis (reference: kernels/reference.py), for
# the attention block's (…, L_q, L_k) scores. Parallel over rows, one row per thread at a time,
# so the result does not depend on the thread count; the row loops are C with `omp simd`, which
# vectorises the reductions and minidiff_expf. Sums run in a different order than NumPy's
# pairwise ones, so float32 results differ in the last bits; tests compare with a tolerance.

cdef extern from *:
    """
    /* P = exp(z − max z) / Σ exp(z − max z) for one row, z = scale · s. */
    #define MINIDIFF_SOFTMAX_FORWARD(T, NAME, EXP)                                               \\
    MINIDIFF_CLONES static void NAME(const T *restrict s, ptrdiff_t len, T scale, T *restrict p) { \\
        T top = s[0] * scale;                                                                    \\
        for (ptrdiff_t k = 0; k < len; k++) { p[k] = s[k] * scale; top = p[k] > top ? p[k] : top; } \\
        T sum = 0;                                                                               \\
        _Pragma("omp simd reduction(+:sum)")                                                     \\
        for (ptrdiff_t k = 0; k < len; k++) { p[k] = EXP(p[k] - top); sum += p[k]; }             \\
        _Pragma("omp simd")                                                                      \\
        for (ptrdiff_t k = 0; k < len; k++) p[k] = p[k] / sum;                                   \\
    }

    /* ∂z = P ⊙ (∂P − Σⱼ ∂P ⊙ P) for one row. */
    #define MINIDIFF_SOFTMAX_BACKWARD(T, NAME)                                                   \\
    MINIDIFF_CLONES static void NAME(const T *restrict p, const T *restrict dp, ptrdiff_t len,     \\
                                     T *restrict dz) {                                             \\
        T dot = 0;                                                                               \\
        _Pragma("omp simd reduction(+:dot)")                                                     \\
        for (ptrdiff_t k = 0; k < len; k++) dot += dp[k] * p[k];                                 \\
        _Pragma("omp simd")                                                                      \\
        for (ptrdiff_t k = 0; k < len; k++) dz[k] = p[k] * (dp[k] - dot);                        \\
    }

    MINIDIFF_SOFTMAX_FORWARD(float, softmax_forward_row_f, minidiff_expf)
    MINIDIFF_SOFTMAX_FORWARD(double, softmax_forward_row_d, exp)
    MINIDIFF_SOFTMAX_BACKWARD(float, softmax_backward_row_f)
    MINIDIFF_SOFTMAX_BACKWARD(double, softmax_backward_row_d)
    """
    void softmax_forward_row_f(const float* s, Py_ssize_t length, float scale, float* p) noexcept nogil
    void softmax_forward_row_d(const double* s, Py_ssize_t length, double scale, double* p) noexcept nogil
    void softmax_backward_row_f(const float* p, const float* dp, Py_ssize_t length, float* dz) noexcept nogil
    void softmax_backward_row_d(const double* p, const double* dp, Py_ssize_t length, double* dz) noexcept nogil


def softmax_forward(const real[:, ::1] scores, double scale, real[:, ::1] probs):
    """probs[r] = softmax(scale · scores[r]) for every row r."""
    cdef Py_ssize_t r, length = scores.shape[1]
    if length == 0:
        return
    for r in prange(scores.shape[0], nogil=True, schedule="static", num_threads=threads_for(scores.shape[0] * length)):
        if real is float:
            softmax_forward_row_f(&scores[r, 0], length, <float> scale, &probs[r, 0])
        else:
            softmax_forward_row_d(&scores[r, 0], length, scale, &probs[r, 0])


def softmax_backward(const real[:, ::1] probs, const real[:, ::1] grad_probs, real[:, ::1] grad_scores):
    """grad_scores[r] = P ⊙ (∂P − ⟨∂P, P⟩) for every row r: ∂ with respect to the scaled scores."""
    cdef Py_ssize_t r, length = probs.shape[1]
    if length == 0:
        return
    for r in prange(probs.shape[0], nogil=True, schedule="static", num_threads=threads_for(probs.shape[0] * length)):
        if real is float:
            softmax_backward_row_f(&probs[r, 0], &grad_probs[r, 0], length, &grad_scores[r, 0])
        else:
            softmax_backward_row_d(&probs[r, 0], &grad_probs[r, 0], length, &grad_scores[r, 0])
