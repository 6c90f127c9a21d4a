"""Small solvers shared by the gradient balancers.

Two paths:

- In-graph solvers written in `keras.ops`: bounded `while_loop`s, no Python
  branch on tensor values, so they run in `tf.function` and under XLA. They
  work on the `T x T` Gramian `G = J J^T` of the task gradients (in float64,
  which costs nothing at this size), never on the `T x P` Jacobian. The
  number of tasks must be static.

  - `min_norm_weights` (MGDA, and the starting points of CAGrad and
    Nash-MTL): closed form for `T <= 2`, else Wolfe's exact active-set
    min-norm-point algorithm.
  - `lower_bounded_qp` (UPGrad, DualProj): `min v^T G v` s.t. `v >= u`, a
    non-negative least-squares problem, by Lawson-Hanson's active-set method.
  - `simplex_qp`, `box_qp`, `cagrad_weights`: accelerated projected gradient
    with adaptive restart, stopped when the step falls below a tolerance.
  - `nash_weights`: damped Newton on a self-concordant convex function.
  - `project_onto_simplex`: sort-based Euclidean projection.

  Active-set steps solve small linear systems with `guarded_solve` (QR; never
  raises on singular systems, unlike TensorFlow's `solve`, and has an XLA
  kernel, unlike its LU and log-determinant).
- Reference solvers in cvxpy (CLARABEL, then OSQP/SCS), called eagerly on
  NumPy arrays or inside a graph through `tf.numpy_function`
  (`cvxpy_or_fallback`, not under XLA). They are used by the tests and on
  request (`solver="cvxpy"`); when a cvxpy solve fails, the in-graph result
  is used instead and the failure is counted.

The tests check the in-graph solvers against cvxpy on random problems with
up to 100 tasks: never worse than cvxpy's objective by more than `1e-5`
(relative), and satisfying the KKT conditions.
"""

from __future__ import annotations

import functools
import operator

import numpy as np
from keras import ops

from keras_mtl.gradients.matmul_backend import onednn_cpu_matmuls

# -------------------------------------------------------------- basic helpers


def gramian(jacobian):
    """`J J^T`, the `(T, T)` matrix of inner products of the task gradients.

    With few tasks and many parameters one `(T, P) x (P, T)` product keeps
    most of a CPU idle, in a way that depends on TensorFlow's CPU matmul
    library (`keras_mtl.gradients.matmul_backend`), so the product is formed
    in pieces, the same values up to float32 rounding:

    - Eigen (or a GPU, unmeasured there), for T <= 8: each row is cut into
      `k` contiguous pieces (a free reshape to `(k T, P / k)`), the pieces'
      Gramian is formed and its `k` diagonal blocks summed (a 2 x 2 output
      is one tile of Eigen's kernel): 1.2-2.3x faster than one product at
      P = 780k on two cores.
    - oneDNN (CPUs with AVX-512 VNNI or BF16), for T >= 4: the Gramians of
      up to 64 column blocks of about 256 KB are summed. oneDNN runs a
      product with a tiny output on one thread; the blocks run in parallel
      and in cache: 2-3x faster at T = 8 to 12 and P = 780k, 3x at T = 10
      and P = 8M, 1.4x at T = 40.

    Args:
        jacobian: `(T, P)` tensor.

    Returns:
        `(T, T)` float32 tensor.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import gramian
    >>> jac = np.array([[1.0, 0.0, 2.0, 1.0], [0.0, 3.0, 1.0, 1.0]])
    >>> np.asarray(gramian(jac)).tolist()
    [[6.0, 3.0], [3.0, 11.0]]
    """
    jacobian = ops.cast(jacobian, "float32")
    num_tasks, num_params = jacobian.shape
    if num_tasks is None or not num_params:  # dynamic or empty: nothing to cut
        return ops.einsum("tp,sp->ts", jacobian, jacobian)
    if onednn_cpu_matmuls():
        width = -(-num_params // _column_blocks(num_tasks, num_params))
        parts = [jacobian[:, start : start + width] for start in range(0, num_params, width)]
        return functools.reduce(operator.add, [ops.einsum("tp,sp->ts", p, p) for p in parts])
    pieces = _row_pieces(num_tasks, num_params)
    if pieces == 1:
        return ops.einsum("tp,sp->ts", jacobian, jacobian)
    rows = ops.reshape(jacobian, (num_tasks * pieces, num_params // pieces))
    blocks = ops.reshape(
        ops.einsum("ip,jp->ij", rows, rows), (num_tasks, pieces, num_tasks, pieces)
    )
    return ops.sum(ops.diagonal(blocks, axis1=1, axis2=3), axis=-1)


# `scaled_gramian` rescales a Jacobian whose Gramian has a diagonal entry
# above float32's range or every diagonal entry below this (the products
# of the entries are then near or in float32's subnormal range).
_TINY_GRAMIAN = 2.0**-100


def scaled_gramian(jacobian):
    """The Gramian of `J / s`, with `s` a power of two chosen so that it is
    neither infinite nor lost to underflow, and `s`.

    `J J^T` overflows float32 for gradient rows of norm above about 1.8e19
    (and the methods then give NaN), and underflows to 0 below about 1e-19.
    The Gramian is formed once, as by `gramian`; only when its diagonal is
    not finite, or all of it is below `2^-100`, is it formed again from `J`
    divided by the power of two nearest below `max |J|`: exact (a power of
    two only shifts exponents), and `s = 1` otherwise, so the usual path
    costs one Gramian and its values are `gramian`'s. `J J^T = s^2 G`:
    methods whose weights are invariant to a common scale of the gradients
    use `G` as is; the others multiply what needs the absolute scale by `s`.

    Args:
        jacobian: `(T, P)` tensor.

    Returns:
        `(G, s)`: the `(T, T)` float32 Gramian of `J / s` and the float32
        scalar `s` (a power of two between `2^-126` and `2^126`; 1 when no
        rescaling was needed). A non-finite `J` gives a non-finite `G`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import scaled_gramian
    >>> jac = np.array([[3e20, 4e20], [0.0, 1e20]], "float32")
    >>> gram, scale = scaled_gramian(jac)
    >>> float(scale) == 2.0**68
    True
    >>> (np.asarray(gram, dtype=float) * float(scale) ** 2 / 1e40).round(4).tolist()
    [[25.0, 4.0], [4.0, 1.0]]
    >>> gram, scale = scaled_gramian(np.array([[1.0, 2.0]], "float32"))
    >>> np.asarray(gram).tolist(), float(scale)
    ([[5.0]], 1.0)
    """
    jacobian = ops.cast(ops.convert_to_tensor(jacobian), "float32")
    gram = gramian(jacobian)
    diag = ops.diagonal(gram)
    fine = ops.logical_and(ops.all(ops.isfinite(diag)), ops.max(diag) >= _TINY_GRAMIAN)

    def rescaled():
        peak = ops.max(ops.abs(jacobian))
        # 2^e <= peak, with 2^-e a normal float32 (no flush to zero).
        exponent = ops.clip(ops.floor(ops.log2(peak)), -126.0, 126.0)
        exponent = ops.where(peak > 0, exponent, 0.0)
        return gramian(jacobian * ops.power(2.0, -exponent)), ops.power(2.0, exponent)

    return ops.cond(fine, lambda: (gram, ops.ones((), "float32")), rescaled)


def _column_blocks(num_tasks: int, num_params: int, block_bytes: int = 2**18) -> int:
    """How many column blocks `gramian` cuts a float32 `(T, P)` Jacobian into
    under oneDNN: 1 for T <= 3 (one product is fastest there), else about
    `block_bytes` per block and at most 64 blocks."""
    if num_tasks <= 3:
        return 1
    return min(64, -(-4 * num_tasks * num_params // block_bytes))


def _row_pieces(num_tasks: int, num_params: int, rows: int = 16) -> int:
    """The largest divisor `k` of `num_params` with `k * num_tasks <= rows`
    (1 when the rows are many)."""
    for pieces in range(rows // num_tasks, 1, -1):
        if num_params % pieces == 0:
            return pieces
    return 1


def normalize_gramian(gram):
    """Divides a Gramian by the mean of its diagonal (zero stays zero).

    The weights of every Gramian method here are invariant to a common scale
    of the gradients; working on a normalised matrix keeps the solvers'
    step sizes and tolerances meaningful for gradients of any magnitude.

    Args:
        gram: `(T, T)` positive semi-definite tensor.

    Returns:
        The normalised `(T, T)` float32 tensor, symmetrised.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import normalize_gramian
    >>> np.asarray(normalize_gramian(np.array([[1.0, 2.0], [2.0, 7.0]]))).tolist()
    [[0.25, 0.5], [0.5, 1.75]]
    >>> np.asarray(normalize_gramian(np.zeros((2, 2)))).tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    gram = ops.cast(gram, "float32")
    return 0.5 * (gram + ops.transpose(gram)) / gramian_scale(gram)


def gramian_scale(gram):
    """The factor `normalize_gramian` divides by: the mean of the diagonal,
    or 1 where that is 0 or not finite.

    Args:
        gram: `(T, T)` positive semi-definite tensor.

    Returns:
        A positive float32 scalar, the mean squared gradient norm; the
        gradients' norms on the normalised scale are their norms divided by
        its square root.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import gramian_scale
    >>> float(gramian_scale(np.array([[4.0, 1.0], [1.0, 2.0]]))), float(gramian_scale(np.zeros((2, 2))))
    (3.0, 1.0)
    """
    scale = ops.mean(ops.diagonal(ops.cast(gram, "float32")))
    return ops.where(ops.logical_and(scale > 0, ops.isfinite(scale)), scale, 1.0)


def row_norms(x):
    """Euclidean norms of the rows of `x` without overflow or underflow.

    The plain `sqrt(sum(x^2))` is used when every row's sum of squares is a
    normal finite number; otherwise (huge or tiny rows, zero rows) each row
    is first scaled by its largest magnitude, which costs two more passes.

    Args:
        x: `(..., n)` tensor.

    Returns:
        `(...)` tensor of the norms over the last axis, in `x`'s dtype.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import row_norms
    >>> np.asarray(row_norms(np.array([[3.0, 4.0], [0.0, 0.0]]))).tolist()
    [5.0, 0.0]
    >>> # 3e30^2 overflows float32; the scaled path still gives 5e30.
    >>> (np.asarray(row_norms(np.array([[3e30, 4e30]], "float32")), dtype=float) / 1e30).round(4).tolist()
    [5.0]
    """
    x = ops.convert_to_tensor(x)
    squares = ops.sum(ops.square(x), axis=-1)

    def scaled():
        peak = ops.max(ops.abs(x), axis=-1, keepdims=True)
        safe = ops.where(peak > 0, peak, 1.0)
        return peak[..., 0] * ops.sqrt(ops.sum(ops.square(x / safe), axis=-1))

    fine = ops.all(ops.logical_and(ops.isfinite(squares), squares > 1e-30))
    return ops.cond(fine, lambda: ops.sqrt(squares), scaled)


def safe_divide(x, y):
    """`x / y` where `y != 0`, else 0 (no NaN, no inf).

    Args:
        x: numerator tensor.
        y: denominator tensor, broadcastable with `x`.

    Returns:
        The quotient, 0 wherever `y == 0`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import safe_divide
    >>> np.asarray(safe_divide(np.array([1.0, 2.0, 3.0]), np.array([2.0, 0.0, -1.0]))).tolist()
    [0.5, 0.0, -3.0]
    """
    nonzero = y != 0
    return ops.where(nonzero, x / ops.where(nonzero, y, 1.0), 0.0)


def guarded_solve(matrix, rhs):
    """Solves `matrix @ x = rhs`, reporting (not raising) singular systems.

    TensorFlow's `solve` raises on an exactly singular matrix at run time and
    its LU and log-determinant have no XLA kernel; this uses a Householder QR
    (which never fails) and a triangular solve, and flags systems whose `R`
    has a (relatively) zero pivot.

    Args:
        matrix: `(..., n, n)` tensor.
        rhs: `(..., n, k)` tensor.

    Returns:
        `(x, ok)`: the solution and a boolean `(...)` tensor that is `False`
        where the system was (numerically) singular or the solution is not
        finite; `x` is then meaningless but finite.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import guarded_solve
    >>> x, ok = guarded_solve(np.array([[2.0, 0.0], [1.0, 4.0]]), np.array([[2.0], [9.0]]))
    >>> np.round(np.asarray(x), 6).tolist(), bool(ok)
    ([[1.0], [2.0]], True)
    >>> _, ok = guarded_solve(np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([[1.0], [2.0]]))
    >>> bool(ok)
    False
    """
    q, r = ops.qr(matrix, mode="reduced")
    pivots = ops.abs(ops.diagonal(r, axis1=-2, axis2=-1))
    eps = 1e-13 if matrix.dtype == "float64" else 1e-6
    tol = eps * ops.max(pivots, axis=-1, keepdims=True)
    singular = pivots <= tol
    ok = ops.logical_not(ops.any(singular, axis=-1))
    eye = ops.eye(matrix.shape[-1], dtype=matrix.dtype)
    r = r + eye * ops.cast(singular, matrix.dtype)[..., None, :]
    qtb = ops.matmul(ops.swapaxes(q, -1, -2), rhs)
    x = ops.solve_triangular(r, qtb, lower=False)
    finite = ops.all(ops.isfinite(x), axis=(-2, -1))
    ok = ops.logical_and(ok, finite)
    return ops.where(finite[..., None, None], x, 0.0), ok


def lipschitz_bound(gram):
    """An upper bound on the largest eigenvalue of a PSD matrix (Gershgorin,
    capped by the trace); never smaller than the true value.

    Args:
        gram: `(..., T, T)` positive semi-definite tensor.

    Returns:
        `(...)` tensor: the smaller of the largest absolute row sum and the
        trace, or 1 for a zero matrix (a usable step-size scale).

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import lipschitz_bound
    >>> # Eigenvalues 3 and 1: the row sums (3) are the bound.
    >>> float(lipschitz_bound(np.array([[2.0, 1.0], [1.0, 2.0]])))
    3.0
    >>> # Rank one, eigenvalues 5 and 0: the trace (5) is smaller than the row sum (6).
    >>> float(lipschitz_bound(np.array([[4.0, 2.0], [2.0, 1.0]])))
    5.0
    """
    rows = ops.max(ops.sum(ops.abs(gram), axis=-1), axis=-1)
    trace = ops.sum(ops.diagonal(gram, axis1=-2, axis2=-1), axis=-1)
    bound = ops.minimum(rows, trace)
    return ops.where(bound > 0, bound, 1.0)


def project_onto_simplex(v):
    """Euclidean projection onto the probability simplex, over the last axis.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008): `O(T log T)`.

    Args:
        v: `(..., T)` tensor.

    Returns:
        `(..., T)` tensor with non-negative entries summing to 1.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import project_onto_simplex
    >>> np.round(np.asarray(project_onto_simplex(np.array([0.5, 2.0, -1.0]))), 6).tolist()
    [0.0, 1.0, 0.0]
    """
    v = ops.convert_to_tensor(v)
    if v.dtype not in ("float32", "float64"):
        v = ops.cast(v, "float32")
    num = v.shape[-1]
    u = -ops.sort(-v, axis=-1)
    css = ops.cumsum(u, axis=-1) - 1.0
    k = ops.arange(1, num + 1, dtype=v.dtype)
    support = ops.cast(u - css / k > 0, "int32")
    rho = ops.maximum(ops.sum(support, axis=-1, keepdims=True), 1)
    theta = ops.take_along_axis(css, rho - 1, axis=-1) / ops.cast(rho, v.dtype)
    return ops.maximum(v - theta, 0.0)


def graph_when_eager(fn):
    """Runs an iterative solver as a `tf.function` when called eagerly.

    Eager execution would run every loop iteration op by op (milliseconds
    each); inside a graph (the training step) the function is inlined.

    Args:
        fn: the function to wrap (its Python arguments, such as iteration
            counts, become part of the trace).

    Returns:
        A function with `fn`'s name and docstring that calls a
        `tf.function` of `fn` when executing eagerly, and `fn` itself in a
        graph.

    Example:

    >>> import tensorflow as tf
    >>> from keras_mtl.balancers.solvers import graph_when_eager
    >>> @graph_when_eager
    ... def eager_inside(x):
    ...     return tf.constant(tf.executing_eagerly())
    >>> bool(eager_inside(tf.constant(1.0)))
    False
    """
    import functools

    import tensorflow as tf

    compiled = tf.function(fn, autograph=False)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if tf.executing_eagerly():
            return compiled(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


# ------------------------------------------------------ min-norm (simplex QP)

_DTYPE = "float64"
# Relative tolerance of the active-set solvers' optimality tests.
_TOL = 1e-11


def _as64(x):
    return ops.cast(ops.convert_to_tensor(x), _DTYPE)


def _min_norm_two(gram):
    g11, g12, g22 = gram[0, 0], gram[0, 1], gram[1, 1]
    denom = g11 + g22 - 2.0 * g12
    w1 = ops.clip(safe_divide(g22 - g12, denom), 0.0, 1.0)
    # Identical gradients (denom 0): every convex combination is optimal.
    w1 = ops.where(denom > 0, w1, 0.5)
    return ops.stack([w1, 1.0 - w1])


def _affine_min_norm(gram, corral, ridge):
    """Min-norm point of the affine hull of the corral (KKT system)."""
    num = gram.shape[-1]
    eye = ops.eye(num, dtype=_DTYPE)
    outer = corral[:, None] * corral[None, :]
    block = gram * outer + eye * (1.0 - corral)[None, :] + ridge * eye * corral[None, :]
    top = ops.concatenate([block, -corral[:, None]], axis=1)
    bottom = ops.concatenate([corral[None, :], ops.zeros((1, 1), dtype=_DTYPE)], axis=1)
    rhs = ops.concatenate([ops.zeros((num,), dtype=_DTYPE), ops.ones((1,), dtype=_DTYPE)])
    sol, ok = guarded_solve(ops.concatenate([top, bottom], axis=0), rhs[:, None])
    return sol[:num, 0] * corral, ok


@graph_when_eager
def min_norm_weights(gram, max_iters: int | None = None, active=None):
    """Weights of the minimum-norm point in the convex hull of the gradients.

    Solves `min_{w in simplex} w^T G w`; the point is `w^T J`. Closed form for
    one and two tasks; Wolfe's active-set ("corral") algorithm otherwise,
    in float64 and inside a `while_loop` that stops at optimality (or after
    `max_iters` steps), which is exact up to rounding.

    Args:
        gram: `(T, T)` Gramian of the task gradients.
        max_iters: bound on the number of steps (default `5 T + 50`).
        active: optional `(T,)` booleans: the hull of the gradients where
            it is true (the others get weight 0); every gradient when
            `None` or when none is true.

    Returns:
        `(T,)` float32 weights on the simplex.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import min_norm_weights
    >>> jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> np.round(np.asarray(min_norm_weights(jac @ jac.T), dtype=float), 4).tolist()
    [0.6, 0.4]

    References:
        Wolfe, "Finding the nearest point in a polytope", Mathematical
        Programming 11, 1976.
    """
    gram = _as64(normalize_gramian(ops.convert_to_tensor(gram)))
    num = gram.shape[-1]
    if num == 1:
        return ops.ones((1,))
    active = ops.ones((num,), "bool") if active is None else ops.cast(active, "bool")
    active = ops.logical_or(active, ops.logical_not(ops.any(active)))
    if num == 2:
        alone = ops.cast(active, "float32")
        both = ops.all(active)
        return ops.where(both, ops.cast(_min_norm_two(gram), "float32"), alone)
    max_iters = 5 * num + 50 if max_iters is None else max_iters
    diag = ops.diagonal(gram)
    scale = ops.maximum(ops.max(diag), 1e-300)
    ridge = 1e-10 * scale
    # Inactive vertices never enter the corral: their weight stays 0.
    barred = ops.cast(ops.where(active, 0.0, np.inf), _DTYPE)
    first = ops.one_hot(ops.argmin(diag + barred), num, dtype=_DTYPE)

    def body(i, x, corral, done):
        y, ok = _affine_min_norm(gram, corral, ridge)
        interior = ops.all(ops.logical_or(corral == 0, y > 0))
        # Major step: y is the new iterate; add the most violating vertex.
        gy = ops.matmul(gram, y)
        fy = ops.sum(y * gy)
        j = ops.argmin(gy + barred)
        improve = gy[j] < fy - _TOL * scale
        corral_major = ops.maximum(
            corral, ops.one_hot(j, num, dtype=_DTYPE) * ops.cast(improve, _DTYPE)
        )
        # Minor step: move towards y until a weight hits zero, drop it.
        blocking = ops.logical_and(corral > 0, y <= 0)
        ratio = ops.where(blocking, x / ops.where(blocking, x - y, 1.0), 1.0)
        theta = ops.clip(ops.min(ratio), 0.0, 1.0)
        x_minor = x + theta * (y - x)
        hit = ops.one_hot(ops.argmin(ratio), num, dtype=_DTYPE)
        keep = ops.cast(x_minor > 1e-14, _DTYPE) * corral * (1.0 - hit)
        x_minor = ops.maximum(x_minor, 0.0) * keep
        x_minor = x_minor / ops.sum(x_minor)
        x_new = ops.where(interior, y, x_minor)
        corral_new = ops.where(interior, corral_major, keep)
        done_new = ops.logical_or(
            ops.logical_and(interior, ops.logical_not(improve)), ops.logical_not(ok)
        )
        x_new = ops.where(ok, x_new, x)
        return i + 1, x_new, ops.where(ok, corral_new, corral), done_new

    _, x, _, _ = ops.while_loop(
        lambda i, x, c, d: ops.logical_and(i < max_iters, ops.logical_not(d)),
        lambda i, x, c, d: body(i, x, c, d),
        (ops.convert_to_tensor(0), first, first, ops.convert_to_tensor(False)),
    )
    x = ops.maximum(x, 0.0)
    return ops.cast(x / ops.sum(x), "float32")


def _fista(gram, lin, project, start, max_iters, tol):
    """Accelerated projected gradient with adaptive restart (O'Donoghue &
    Candes 2015) for `0.5 x^T G x + c^T x` over a set given by `project`;
    stops when the proximal-gradient step is below `tol` (or `max_iters`)."""
    step = 1.0 / lipschitz_bound(gram)

    def body(i, x, y, t, moved):
        grad = ops.matmul(y, gram) + lin
        x_new = project(y - step * grad)
        restart = ops.sum((y - x_new) * (x_new - x)) > 0
        t_new = 0.5 * (1.0 + ops.sqrt(1.0 + 4.0 * t * t))
        y_new = ops.where(restart, x_new, x_new + ((t - 1.0) / t_new) * (x_new - x))
        moved = ops.max(ops.abs(x_new - y))
        return i + 1, x_new, y_new, ops.where(restart, ops.ones_like(t), t_new), moved

    one = ops.ones((), dtype=_DTYPE)
    _, x, _, _, _ = ops.while_loop(
        lambda i, x, y, t, moved: ops.logical_and(i < max_iters, moved > tol),
        body,
        (ops.convert_to_tensor(0), start, start, one, one),
    )
    return x


@graph_when_eager
def simplex_qp(gram, linear=None, max_iters: int = 5000, tol: float = 1e-12):
    """Minimises `0.5 w^T G w + c^T w` over the probability simplex.

    Accelerated projected gradient with adaptive restart, in float64, until
    the proximal-gradient step falls below `tol` (or `max_iters` steps).
    For the min-norm problem (`c = 0`) prefer the exact `min_norm_weights`.

    Args:
        gram: `(T, T)` positive semi-definite tensor.
        linear: optional `(T,)` linear term `c`.
        max_iters: bound on the number of iterations.
        tol: stopping tolerance on the step.

    Returns:
        `(T,)` float32 weights on the simplex.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import simplex_qp
    >>> np.round(np.asarray(simplex_qp(np.eye(2), np.array([0.0, 0.5])), dtype=float), 4).tolist()
    [0.75, 0.25]
    """
    gram = _as64(gram)
    num = gram.shape[-1]
    lin = ops.zeros((num,), dtype=_DTYPE) if linear is None else _as64(linear)
    start = ops.ones((num,), dtype=_DTYPE) / num
    x = _fista(gram, lin, project_onto_simplex, start, max_iters, tol)
    return ops.cast(x, "float32")


@graph_when_eager
def box_qp(gram, linear, lower, upper, max_iters: int = 5000, tol: float = 1e-12):
    """Minimises `0.5 x^T G x + c^T x` subject to `lower <= x <= upper`.

    Accelerated projected gradient with adaptive restart (projection:
    clipping), in float64, until the step falls below `tol`.

    Args:
        gram: `(T, T)` positive semi-definite tensor.
        linear: `(T,)` linear term `c`.
        lower: `(T,)` lower bounds.
        upper: `(T,)` upper bounds (`>= lower`).
        max_iters: bound on the number of iterations.
        tol: stopping tolerance on the step.

    Returns:
        `(T,)` float32 solution.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import box_qp
    >>> out = box_qp(np.eye(2), np.array([-2.0, 1.0]), np.zeros(2), np.ones(2))
    >>> np.round(np.asarray(out, dtype=float), 4).tolist()
    [1.0, 0.0]
    """
    gram = _as64(gram)
    lower, upper = _as64(lower), _as64(upper)
    x = _fista(
        gram,
        _as64(linear),
        lambda v: ops.clip(v, lower, upper),
        0.5 * (lower + upper),
        max_iters,
        tol,
    )
    return ops.cast(x, "float32")


# ------------------------------------------------------- lower-bounded QP


@graph_when_eager
def lower_bounded_qp(gram, lower, max_iters: int | None = None):
    """Solves `min_v 0.5 v^T G v  s.t.  v >= u` for each row `u` of `lower`.

    This is the dual of projecting `u^T J` onto the dual cone of the rows of
    `J` (UPGrad, DualProj): at the optimum `G v >= 0`, so `v^T J` conflicts
    with no task. Written `v = u + l`, it is a non-negative least-squares
    problem in `l`, solved by the Lawson-Hanson active-set method in float64,
    all rows at once, until every row is optimal (or `max_iters` steps).

    Args:
        gram: `(T, T)` positive semi-definite tensor.
        lower: `(m, T)` lower bounds (one problem per row).
        max_iters: bound on the number of steps (default `5 T + 50`).

    Returns:
        `(m, T)` float32 solutions.

    Example:

    With `J = [[1, 0], [-1, 1]]` the two gradients conflict; projecting each
    onto the cone of directions that conflict with neither gives `v = [1, 0.5]`
    (direction `[0.5, 0.5]`, orthogonal to `g_2`) and `v = [1, 1]` (direction
    `[0, 1]`, orthogonal to `g_1`):

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import lower_bounded_qp
    >>> jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
    >>> np.round(np.asarray(lower_bounded_qp(jac @ jac.T, np.eye(2)), dtype=float), 4).tolist()
    [[1.0, 0.5], [1.0, 1.0]]

    References:
        Lawson & Hanson, "Solving Least Squares Problems", 1974, chapter 23.
    """
    gram = _as64(gram)
    gram = 0.5 * (gram + ops.transpose(gram))
    lower = _as64(lower)
    num = gram.shape[-1]
    rows = lower.shape[0]
    max_iters = 5 * num + 50 if max_iters is None else max_iters
    eye = ops.eye(num, dtype=_DTYPE)
    scale = ops.maximum(ops.max(ops.diagonal(gram)), 1e-300)
    ridge = 1e-10 * scale
    gu = ops.matmul(lower, gram)
    tol = _TOL * scale * ops.maximum(ops.max(ops.abs(lower), axis=-1), 1e-300)

    def body(i, lam, passive, done):
        outer = passive[:, :, None] * passive[:, None, :]
        matrix = gram[None] * outer + eye[None] * (1.0 - passive)[:, None, :]
        matrix = matrix + ridge * eye[None] * passive[:, None, :]
        sol, ok = guarded_solve(matrix, (-gu * passive)[:, :, None])
        s = sol[:, :, 0] * passive
        feasible = ops.all(ops.logical_or(passive == 0, s > 0), axis=-1)
        # Feasible: accept s, then add the most violated constraint.
        neg_grad = -(gu + ops.matmul(s, gram))
        candidates = ops.where(passive > 0, -1e300, neg_grad)
        j = ops.argmax(candidates, axis=-1)
        best = ops.max(candidates, axis=-1)
        improve = best > tol
        add = ops.one_hot(j, num, dtype=_DTYPE) * ops.cast(improve, _DTYPE)[:, None]
        # Infeasible: step towards s until a variable hits zero, release it.
        blocking = ops.logical_and(passive > 0, s <= 0)
        ratio = ops.where(blocking, lam / ops.where(blocking, lam - s, 1.0), 1.0)
        alpha = ops.clip(ops.min(ratio, axis=-1), 0.0, 1.0)[:, None]
        lam_b = lam + alpha * (s - lam)
        # The blocking variable leaves exactly (rounding may leave ~1e-20).
        hit = ops.one_hot(ops.argmin(ratio, axis=-1), num, dtype=_DTYPE)
        tiny = 1e-14 * ops.max(ops.abs(lam_b), axis=-1, keepdims=True)
        keep = ops.cast(lam_b > tiny, _DTYPE) * passive * (1.0 - hit)
        lam_b = ops.maximum(lam_b, 0.0) * keep
        f = feasible[:, None]
        lam_new = ops.where(f, s, lam_b)
        passive_new = ops.where(f, ops.maximum(passive, add), keep)
        finished = ops.logical_or(
            ops.logical_and(feasible, ops.logical_not(improve)), ops.logical_not(ok)
        )
        active = ops.logical_and(ops.logical_not(done), ok)[:, None]
        lam = ops.where(active, lam_new, lam)
        passive = ops.where(active, passive_new, passive)
        return i + 1, lam, passive, ops.logical_or(done, finished)

    zeros = ops.zeros((rows, num), dtype=_DTYPE)
    _, lam, _, _ = ops.while_loop(
        lambda i, lam, p, d: ops.logical_and(i < max_iters, ops.logical_not(ops.all(d))),
        lambda i, lam, p, d: body(i, lam, p, d),
        (ops.convert_to_tensor(0), zeros, zeros, ops.zeros((rows,), dtype="bool")),
    )
    return ops.cast(lower + lam, "float32")


# ------------------------------------------------------------- CAGrad dual


@graph_when_eager
def cagrad_weights(gram, c: float, num_iters: int = 500):
    """Solves CAGrad's dual `min_{w in simplex} w^T G b + c |g0| sqrt(w^T G w)`.

    `b = 1/T` (so `G b` holds the inner products with the average gradient
    `g0`, and `|g0|^2 = b^T G b`). Accelerated projected gradient with
    restart on the (smoothed) objective; its curvature is bounded by
    `c |g0| lambda_max / m`, with `m` the norm of the min-norm point, which
    sets the step size.

    Args:
        gram: `(T, T)` Gramian (normalised or not).
        c: the conflict-aversion radius `c >= 0`.
        num_iters: maximum number of iterations (it stops earlier once the
            proximal-gradient step is below `1e-13`).

    Returns:
        `(T,)` float32 weights `w` on the simplex.

    Example:

    Two orthogonal gradients of norms 1 and 2 (`G = diag(1, 4)`), `c = 2`;
    the same weights as the cvxpy reference `cagrad_weights_cvxpy` and a
    grid search over the simplex:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import cagrad_weights
    >>> np.round(np.asarray(cagrad_weights(np.diag([1.0, 4.0]), c=2.0), dtype=float), 4).tolist()
    [0.9258, 0.0742]

    References:
        Liu et al., "Conflict-Averse Gradient Descent for Multi-task
        Learning", NeurIPS 2021.
    """
    gram = _as64(normalize_gramian(gram))
    num = gram.shape[-1]
    b = ops.ones((num,), dtype=_DTYPE) / num
    gb = ops.matmul(gram, b)
    g0_norm = ops.sqrt(ops.maximum(ops.sum(b * gb), 0.0) + 1e-12)
    radius = c * g0_norm
    w_mn = _as64(min_norm_weights(gram))
    m2 = ops.maximum(ops.sum(w_mn * ops.matmul(gram, w_mn)), 1e-8)
    lmax = lipschitz_bound(gram)
    curvature = radius * lmax / ops.sqrt(m2) + 1e-12
    step = 1.0 / curvature

    def value(w):
        return ops.sum(w * gb) + radius * ops.sqrt(ops.sum(w * ops.matmul(gram, w)) + 1e-12)

    def body(i, x, y, t, moved):
        gy = ops.matmul(gram, y)
        norm = ops.sqrt(ops.maximum(ops.sum(y * gy), 0.0) + 1e-12)
        grad = gb + radius * gy / ops.maximum(norm, ops.sqrt(m2) * 0.5)
        x_new = project_onto_simplex(y - step * grad)
        restart = value(x_new) > value(x)
        t_new = 0.5 * (1.0 + ops.sqrt(1.0 + 4.0 * t * t))
        y_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
        y_new = ops.where(restart, x_new, y_new)
        t_new = ops.where(restart, 1.0, t_new)
        # Size of the proximal-gradient step at y: zero at the optimum.
        moved = ops.max(ops.abs(x_new - y))
        return i + 1, x_new, y_new, t_new, moved

    # Start from the min-norm point: the dual's optimum lies between it and b.
    start = (
        ops.convert_to_tensor(0),
        w_mn,
        w_mn,
        ops.ones((), dtype=_DTYPE),
        ops.ones((), dtype=_DTYPE),
    )
    _, x, _, _, _ = ops.while_loop(
        lambda i, x, y, t, moved: ops.logical_and(i < num_iters, moved > 1e-13),
        body,
        start,
    )
    return ops.cast(x, "float32")


# ---------------------------------------------------------------- Nash-MTL


@graph_when_eager
def nash_weights(gram, init=None, num_iters: int = 100):
    """Solves Nash-MTL's bargaining condition `alpha_i (G alpha)_i = 1`.

    The condition is the stationarity of the convex function
    `f(alpha) = 0.5 alpha^T G alpha - sum_i log (G alpha)_i`; damped Newton
    (step `1 / (1 + decrement)`, which keeps `G alpha > 0` for this
    self-concordant function) from a feasible start converges in a few
    iterations. The start is `init` when `G init > 0`, else the min-norm
    weights (for which `G w >= |w^T J|^2 > 0`), times the scalar that is best
    along that ray (so a warm start from gradients of another scale is fine).
    The condition is solved for the unit gradients (`G_ij / sqrt(G_ii G_jj)`;
    `alpha_i sqrt(G_ii)` solves it there), so that gradient norms that differ
    by many orders of magnitude do not make the Newton system singular.

    Args:
        gram: `(T, T)` Gramian (the caller normalises it).
        init: optional `(T,)` previous solution.
        num_iters: maximum number of Newton iterations (it stops once
            `max |alpha_i (G alpha)_i - 1| < 1e-9`).

    Returns:
        `(alpha, ok)`: the weights, and whether they solve the condition
        (`False` when no direction improves every task, e.g. opposite
        gradients or a zero gradient, or when Newton did not converge;
        `alpha` is then meaningless).

    Example:

    For orthogonal gradients `G` is diagonal and `alpha_i^2 G_ii = 1`, so
    gradients of norms 1 and 2 get `alpha = [1, 1/2]`:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import nash_weights
    >>> alpha, ok = nash_weights(np.diag([1.0, 4.0]))
    >>> np.round(np.asarray(alpha, dtype=float), 4).tolist(), bool(ok)
    ([1.0, 0.5], True)
    >>> _, ok = nash_weights(np.array([[1.0, -1.0], [-1.0, 1.0]]))  # g_2 = -g_1
    >>> bool(ok)
    False

    References:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
    """
    gram = _as64(gram)
    num = gram.shape[-1]
    diag = ops.diagonal(gram)
    positive = ops.all(diag > 0)
    # alpha = scale * beta, with beta the solution for the unit gradients.
    scale = 1.0 / ops.sqrt(ops.where(diag > 0, diag, 1.0))
    gram = gram * scale[:, None] * scale[None, :]
    w_mn = _as64(min_norm_weights(gram))
    m2 = ops.sum(w_mn * ops.matmul(gram, w_mn))
    start = w_mn / ops.sqrt(ops.maximum(m2, 1e-30))
    if init is not None:
        init = _as64(init) / scale
        init_ok = ops.logical_and(ops.all(ops.matmul(gram, init) > 0), ops.all(ops.isfinite(init)))
        start = ops.where(init_ok, init, start)
    # The best multiple t * start (t^2 = T / start^T G start, where f's slope
    # along the ray is zero): a warm start on another scale (the previous
    # step's gradients) is otherwise far from the solution for damped Newton.
    curvature = ops.sum(start * ops.matmul(gram, start))
    start = start * ops.sqrt(num / ops.where(curvature > 0, curvature, float(num)))
    # No solution when 0 is in the hull of the unit gradients (Pareto
    # stationarity); rounding in a float32 Gramian leaves about 1e-6 in `m2`
    # for exactly opposite gradients.
    solvable = ops.logical_and(positive, m2 > 1e-5)
    solvable = ops.logical_and(solvable, ops.all(ops.isfinite(gram)))
    trace = ops.sum(ops.diagonal(gram))
    ridge = 1e-12 * ops.maximum(trace, 1e-300) * ops.eye(num, dtype=_DTYPE)

    def body(alpha):
        galpha = ops.matmul(gram, alpha)
        inv = 1.0 / galpha
        grad = galpha - ops.matmul(gram, inv)
        hess = gram + ops.matmul(gram * (inv * inv)[None, :], gram) + ridge
        delta, ok = guarded_solve(hess, grad[:, None])
        delta = ops.where(ok, delta[:, 0], 0.0)
        decrement = ops.sqrt(ops.maximum(ops.sum(grad * delta), 0.0))
        new = alpha - delta / (1.0 + decrement)
        good = ops.logical_and(ops.all(ops.matmul(gram, new) > 0), ops.all(ops.isfinite(new)))
        return ops.where(good, new, alpha)

    def residual(alpha):
        return ops.max(ops.abs(alpha * ops.matmul(gram, alpha) - 1.0))

    _, alpha = ops.while_loop(
        lambda i, a: ops.logical_and(i < num_iters, residual(a) > 1e-9),
        lambda i, a: (i + 1, body(a)),
        (ops.convert_to_tensor(0), start),
    )
    # The official code's tolerance on |G alpha - 1 / alpha|, here relative.
    solved = ops.logical_and(solvable, residual(alpha) < 1e-3)
    return ops.cast(alpha * scale, "float32"), solved


# ------------------------------------------------------------ cvxpy (host)

_CVXPY_SOLVERS = ("CLARABEL", "OSQP", "SCS")


def _solve(problem, solvers=_CVXPY_SOLVERS) -> bool:
    import cvxpy as cp

    for name in solvers:
        if name not in cp.installed_solvers():
            continue
        try:
            problem.solve(solver=name)
        except (cp.error.SolverError, ValueError, ArithmeticError):
            continue
        if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            return True
    return False


def _psd_factor(gram: np.ndarray) -> np.ndarray:
    """`R` with `R^T R = G` (eigendecomposition; robust to singular `G`)."""
    gram = 0.5 * (gram + gram.T)
    vals, vecs = np.linalg.eigh(gram)
    return (vecs * np.sqrt(np.maximum(vals, 0.0))).T


def min_norm_weights_cvxpy(gram, active=None) -> tuple[np.ndarray, bool]:
    """Reference min-norm weights with cvxpy: `min ||R w||^2` on the simplex.

    Args:
        gram: `(T, T)` NumPy Gramian.
        active: optional `(T,)` mask as in `min_norm_weights`.

    Returns:
        `(weights, ok)`; `ok` is `False` when every solver failed (the
        weights are then uniform).

    Example:

    Orthogonal gradients of norms 1 and 2: `min w_1^2 + 4 w_2^2` on the
    simplex is at `w ∝ (1, 1/4)`, as the in-graph solver finds:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import min_norm_weights, min_norm_weights_cvxpy
    >>> weights, ok = min_norm_weights_cvxpy(np.diag([1.0, 4.0]))
    >>> np.round(weights, 4).tolist(), ok
    ([0.8, 0.2], True)
    >>> np.round(np.asarray(min_norm_weights(np.diag([1.0, 4.0])), dtype=float), 4).tolist()
    [0.8, 0.2]
    """
    import cvxpy as cp

    gram = np.asarray(gram, dtype=np.float64)
    num = gram.shape[0]
    keep = np.ones(num, bool) if active is None else np.asarray(active, bool)
    keep = keep if keep.any() else np.ones(num, bool)
    sub = gram[np.ix_(keep, keep)]
    scale = np.trace(sub) / len(sub) if np.trace(sub) > 0 else 1.0
    w = cp.Variable(len(sub))
    r = _psd_factor(sub / scale)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(r @ w)), [w >= 0, cp.sum(w) == 1])
    ok = _solve(problem) and w.value is not None
    weights = np.zeros(num)
    weights[keep] = np.asarray(w.value) if ok else 1.0 / len(sub)
    return weights, ok


def lower_bounded_qp_cvxpy(gram, lower) -> tuple[np.ndarray, bool]:
    """Reference for `lower_bounded_qp`, one cvxpy problem per row of `lower`.

    Args:
        gram: `(T, T)` NumPy positive semi-definite matrix.
        lower: `(T,)` or `(m, T)` lower bounds, one problem per row.

    Returns:
        `(solutions, ok)`: the `(m, T)` minimisers of `v^T G v` subject to
        `v >= u` and whether every problem was solved (a failed row is `u`).

    Example:

    The problem of `lower_bounded_qp`'s example, with the same solutions:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import lower_bounded_qp_cvxpy
    >>> jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
    >>> solutions, ok = lower_bounded_qp_cvxpy(jac @ jac.T, np.eye(2))
    >>> np.round(solutions, 4).tolist(), ok
    ([[1.0, 0.5], [1.0, 1.0]], True)
    """
    import cvxpy as cp

    gram = np.asarray(gram, dtype=np.float64)
    lower = np.atleast_2d(np.asarray(lower, dtype=np.float64))
    r = _psd_factor(gram)
    out, all_ok = [], True
    for u in lower:
        v = cp.Variable(gram.shape[0])
        problem = cp.Problem(cp.Minimize(cp.sum_squares(r @ v)), [v >= u])
        ok = _solve(problem) and v.value is not None
        all_ok &= ok
        out.append(np.asarray(v.value) if ok else u)
    return np.stack(out), all_ok


def cagrad_weights_cvxpy(gram, c: float) -> tuple[np.ndarray, bool]:
    """Reference CAGrad dual with cvxpy (a second-order cone program).

    Solves the problem of `cagrad_weights` on the Gramian normalised by the
    mean of its diagonal.

    Args:
        gram: `(T, T)` NumPy Gramian.
        c: the conflict-aversion radius `c >= 0`.

    Returns:
        `(weights, ok)`; on failure the weights are uniform and `ok` is
        `False`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import cagrad_weights, cagrad_weights_cvxpy
    >>> weights, ok = cagrad_weights_cvxpy(np.diag([1.0, 4.0]), c=2.0)
    >>> np.round(weights, 3).tolist(), ok
    ([0.926, 0.074], True)
    >>> in_graph = np.asarray(cagrad_weights(np.diag([1.0, 4.0]), c=2.0), dtype=float)
    >>> bool(np.allclose(weights, in_graph, atol=1e-4))
    True

    References:
        Liu et al., "Conflict-Averse Gradient Descent for Multi-task
        Learning", NeurIPS 2021.
    """
    import cvxpy as cp

    gram = np.asarray(gram, dtype=np.float64)
    num = gram.shape[0]
    scale = np.trace(gram) / num if np.trace(gram) > 0 else 1.0
    gram = gram / scale
    b = np.ones(num) / num
    g0_norm = np.sqrt(max(b @ gram @ b, 0.0) + 1e-12)
    r = _psd_factor(gram)
    w = cp.Variable(num)
    objective = (gram @ b) @ w + c * g0_norm * cp.norm(r @ w)
    problem = cp.Problem(cp.Minimize(objective), [w >= 0, cp.sum(w) == 1])
    ok = _solve(problem, ("CLARABEL", "SCS")) and w.value is not None
    return (np.asarray(w.value) if ok else b), ok


def _nash_start(gram: np.ndarray, start: np.ndarray) -> np.ndarray:
    """A start `a > 0` with `G a > 0` for the Nash sequence, or `start` when
    none is found (no direction improves every task).

    The linearisation needs `1 / a` and `1 / (G a)`. The min-norm weights `w`
    have `G w >= w^T G w > 0` whenever a solution exists (as in
    `nash_weights`); mixed with a little of the uniform weights they are
    positive and keep `G a > 0`.
    """
    w, ok = min_norm_weights_cvxpy(gram)
    m2 = float(w @ gram @ w)
    if not ok or not m2 > 0:
        return start
    uniform = np.full(len(w), 1.0 / len(w))
    # G a >= (1 - t) m2 - t max(-G u) = m2 / 2 for this t.
    t = 0.5 * m2 / (m2 + max(0.0, -float(np.min(gram @ uniform))))
    mixed = (1.0 - t) * w + t * uniform
    return mixed if np.all(gram @ mixed > 0) else start


def nash_weights_cvxpy(
    gram, init=None, num_iters: int = 20, normalization: float = 1.0
) -> tuple[np.ndarray, bool]:
    """Nash-MTL's sequence of convex problems (Navon et al. 2022, official code).

    The official code solves for `a` with `a_i n (G a)_i = 1`, `n` its
    normalisation factor: each step minimises
    `sum(G a) + phi'(a_prev)^T (a - a_prev) / n` subject to
    `log(a_i n) + log((G a)_i) >= 0`, with `phi` linearised at the previous
    solution. Here the sequence is run for `b = sqrt(n) a` as the official
    code runs it with `n = 1` (so `b_i (G b)_i = 1`), and `b / sqrt(n)` is
    returned: the same solution (the sequence's fixed point), but reached
    through iterates of order 1 for a Gramian normalised to norm 1, where
    the official ones (of order `1 / sqrt(n)`) left the solver inaccurate or
    failing far from `n = 1` (gradient norms of 1e10 gave weights 98 % off,
    1e-10 a failure). The warm start is rescaled along its ray as in
    `nash_weights`, and replaced by (nearly) the min-norm weights when the
    linearisation is undefined there (a weight or a product `(G a)_i` not
    positive), which a task whose gradient conflicts with the others' made
    a failure. The sequence stops when `|G b - 1/b| < 1e-3` or the iterate
    stalls. CLARABEL replaces ECOS (not bundled with recent cvxpy).

    Args:
        gram: `(T, T)` NumPy Gramian, normalised as the caller wants (the
            iterates are of order 1 when its norm is about 1).
        init: previous solution (ones by default).
        num_iters: maximum number of convex problems.
        normalization: the official code's normalisation factor `n`.

    Returns:
        `(alpha, ok)`; `ok` is `False` when no problem was solved (no
        direction improves every task, or every cvxpy solver failed), and
        `alpha` is then the (rescaled) start.

    Example:

    Orthogonal gradients of norms 1 and 2: the bargaining solution
    `alpha_i^2 G_ii = 1` is `[1, 1/2]`, as `nash_weights` finds in-graph:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import nash_weights_cvxpy
    >>> alpha, ok = nash_weights_cvxpy(np.diag([1.0, 4.0]))
    >>> np.round(alpha, 3).tolist(), ok
    ([1.0, 0.5], True)

    References:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
    """
    import cvxpy as cp

    gram = np.asarray(gram, dtype=np.float64)
    num = gram.shape[0]
    root = float(np.sqrt(normalization))
    # b = sqrt(n) a: the official iterates a are of order 1 / sqrt(n).
    alpha_t = np.ones(num) if init is None else np.asarray(init, dtype=np.float64) * root
    if not (np.all(alpha_t > 0) and np.all(gram @ alpha_t > 0)):
        alpha_t = _nash_start(gram, alpha_t)
    # The best multiple of the start (a warm start from another scale).
    curvature = float(alpha_t @ gram @ alpha_t)
    if np.isfinite(curvature) and curvature > 0:
        alpha_t = alpha_t * np.sqrt(num / curvature)
    alpha = cp.Variable(num, nonneg=True)
    g_param = cp.Parameter((num, num))
    g_alpha = g_param @ alpha
    # phi'(prev) = 1/prev + G^T (1 / (G prev)) and phi'(prev)^T prev are
    # parameters, which keeps the problem DPP (re-solved cheaply).
    phi_grad = cp.Parameter(num)
    offset = cp.Parameter()
    objective = cp.sum(g_alpha) + phi_grad @ alpha - offset
    constraints = [-cp.log(alpha) - cp.log(g_alpha) <= 0]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    g_param.value = gram
    ok_any = False
    for _ in range(num_iters):
        g_prev = gram @ alpha_t
        if np.any(g_prev <= 0) or np.any(alpha_t <= 0):
            break
        phi_grad.value = 1.0 / alpha_t + (1.0 / g_prev) @ gram
        offset.value = float(phi_grad.value @ alpha_t)
        if not _solve(problem, ("CLARABEL", "SCS")) or alpha.value is None:
            break
        ok_any = True
        new = np.asarray(alpha.value)
        done = np.linalg.norm(gram @ alpha_t - 1.0 / (alpha_t + 1e-10)) < 1e-3
        stalled = np.linalg.norm(new - alpha_t) < 1e-6
        if done:
            break
        alpha_t = new
        if stalled:
            break
    return alpha_t / root, ok_any


def nash_weights_exact_cvxpy(gram) -> tuple[np.ndarray, bool]:
    """Nash-MTL's bargaining solution from one convex problem,
    `min 0.5 a^T G a - sum log (G a)` (used by the tests as ground truth).

    The problem's stationarity condition `G a = G (1 / G a)` is the
    bargaining condition `a_i (G a)_i = 1` where `G` is invertible.

    Args:
        gram: `(T, T)` NumPy Gramian.

    Returns:
        `(alpha, ok)`; on failure `alpha` is all ones and `ok` is `False`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.solvers import nash_weights_exact_cvxpy
    >>> alpha, ok = nash_weights_exact_cvxpy(np.diag([1.0, 4.0]))
    >>> np.round(alpha, 3).tolist(), ok
    ([1.0, 0.5], True)

    References:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
    """
    import cvxpy as cp

    gram = np.asarray(gram, dtype=np.float64)
    r = _psd_factor(gram)
    alpha = cp.Variable(gram.shape[0])
    objective = 0.5 * cp.sum_squares(r @ alpha) - cp.sum(cp.log(gram @ alpha))
    problem = cp.Problem(cp.Minimize(objective))
    ok = _solve(problem, ("CLARABEL", "SCS")) and alpha.value is not None
    return (np.asarray(alpha.value) if ok else np.ones(gram.shape[0])), ok


def cvxpy_or_fallback(host_fn, fallback, *inputs):
    """Runs a NumPy/cvxpy function from a graph, falling back on failure.

    `host_fn(*numpy_inputs) -> (weights, ok)` runs eagerly when the inputs are
    eager tensors, and through `tf.numpy_function` inside `tf.function` (not
    under XLA). Non-finite results count as failures.

    Args:
        host_fn: the host function.
        fallback: `(T,)` in-graph result used when the host solve fails.
        *inputs: tensors passed to `host_fn`.

    Returns:
        `(weights, failed)`: the weights and a float32 scalar, 1 on failure.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> from keras_mtl.balancers.solvers import cvxpy_or_fallback, min_norm_weights_cvxpy
    >>> gram, fallback = tf.constant([[1.0, 0.0], [0.0, 4.0]]), tf.constant([0.5, 0.5])
    >>> weights, failed = cvxpy_or_fallback(min_norm_weights_cvxpy, fallback, gram)
    >>> np.round(np.asarray(weights, dtype=float), 4).tolist(), float(failed)
    ([0.8, 0.2], 0.0)
    >>> def broken(gram):
    ...     return np.full(2, np.nan), True
    >>> weights, failed = cvxpy_or_fallback(broken, fallback, gram)
    >>> np.asarray(weights).tolist(), float(failed)
    ([0.5, 0.5], 1.0)
    """
    import tensorflow as tf

    def wrapped(*arrays):
        try:
            weights, ok = host_fn(*arrays)
            weights = np.asarray(weights, dtype=np.float32)
            ok = bool(ok) and bool(np.all(np.isfinite(weights)))
        except Exception:  # noqa: BLE001 - any host failure falls back in-graph
            weights, ok = np.zeros(fallback.shape, np.float32), False
        return weights, np.asarray(ok)

    weights, ok = tf.numpy_function(
        wrapped, [ops.cast(x, "float32") for x in inputs], [tf.float32, tf.bool], stateful=True
    )
    weights = tf.ensure_shape(weights, fallback.shape)
    ok = tf.ensure_shape(ok, ())
    return ops.where(ok, weights, fallback), 1.0 - ops.cast(ok, "float32")
