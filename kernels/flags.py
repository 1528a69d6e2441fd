"""Integer codes shared by the kernels and the engine: triple-barrier flag
bits (part of the storage format), string parameters as ints, candle defect
bits.  Plain constants, so the engine can read them without loading numba."""

# Triple-barrier flag bits (tb_flags).  Part of the storage format.
FLAG_GAP = 1
FLAG_AMBIGUOUS = 2
FLAG_INCOMPLETE = 4
FLAG_NO_VOL = 8

# Integer codes for string parameters; kernels take ints, not strings.
# tie: the label an ambiguous bar gets (the barrier equals the label).
TIE_SL = -1
TIE_TP = 1
TIE_SKIP = 0
VERTICAL_ZERO = 0
VERTICAL_SIGN = 1

# Candle validation reason bits (see ``candle_defects``).
BAD_NONFINITE = 1
BAD_NONPOSITIVE = 2
BAD_HIGH = 4
BAD_LOW = 8
BAD_TS_ORDER = 16
BAD_VOLUME = 32

# An ambiguous bar decided by replaying it on finer candles (resolve_with).
FLAG_RESOLVED = 16

# A row without a position (side 0, NULL or NaN, with side="column"): every
# triple-barrier output NULL.
FLAG_NO_SIDE = 32

# How barrier_grid looks for the next bar touching a level: bar by bar, in
# per-block tables of run extremes (CPU), or over aligned blocks' extremes (CUDA).
SEARCH_SCAN = 0
SEARCH_TABLE = 1
SEARCH_BLOCKS = 2

# barrier_grid: at most this many (pt, sl, horizon) combinations, so at most
# this many distinct upper (or lower) levels a row.
MAX_COMBINATIONS = 256
