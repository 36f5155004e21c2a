/* SSE2 integer instructions on pseudo-random vectors, one checksum line per operation
 * (x86-64 only). The test compares the output with a native run: the oracle for the engine's
 * translation of these instructions (engine/patches/004-x86-sse-inline.patch).
 *
 *   sse_ops [ROUNDS]
 *
 * Register and memory operands, the destination equal to the source, and shift counts at and
 * beyond the element width are all exercised. */
#include <emmintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t state = 0x9E3779B97F4A7C15ull;

static uint64_t next(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static __m128i rnd(void)
{
    /* Mix in small and extreme lanes so that compares, saturation and signs see edge values. */
    uint64_t lo = next(), hi = next();
    switch (next() & 7) {
    case 0: lo &= 0x00FF00FF00FF00FFull; break;
    case 1: hi |= 0x8000800080008000ull; break;
    case 2: lo = hi; break;
    default: break;
    }
    return _mm_set_epi64x((long long)hi, (long long)lo);
}

static uint64_t sums[64];
static const char *names[64];
static int nops;

static void acc(int i, const char *name, __m128i v)
{
    uint64_t w[2];
    memcpy(w, &v, 16);
    sums[i] = (sums[i] * 0x100000001B3ull) ^ w[0] ^ (w[1] * 31);
    names[i] = name;
    if (i + 1 > nops)
        nops = i + 1;
}

/* A memory operand the compiler cannot keep in a register. */
static __m128i mem[4] __attribute__((aligned(16)));
static volatile int sink;

#define OP2(i, name, expr) acc(i, name, (expr))

/* Counts at or beyond the element width: the compiler folds the intrinsic to a constant, so
 * these are written out. */
#define SHIFT(insn, imm, v) ({ __m128i t_ = (v); __asm__(insn " $" #imm ", %0" : "+x"(t_)); t_; })

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 2000;
    for (int r = 0; r < rounds; r++) {
        __m128i a = rnd(), b = rnd();
        mem[r & 3] = rnd();
        const __m128i *m = &mem[r & 3];
        sink = r;
        OP2(0, "paddb", _mm_add_epi8(a, b));
        OP2(1, "paddw", _mm_add_epi16(a, b));
        OP2(2, "paddd", _mm_add_epi32(a, *m));
        OP2(3, "paddq", _mm_add_epi64(a, b));
        OP2(4, "psubb", _mm_sub_epi8(a, b));
        OP2(5, "psubw", _mm_sub_epi16(a, *m));
        OP2(6, "psubd", _mm_sub_epi32(a, b));
        OP2(7, "psubq", _mm_sub_epi64(b, a));
        OP2(8, "pand", _mm_and_si128(a, *m));
        OP2(9, "pandn", _mm_andnot_si128(a, b));
        OP2(10, "por", _mm_or_si128(a, b));
        OP2(11, "pxor", _mm_xor_si128(a, *m));
        OP2(12, "pcmpeqb", _mm_cmpeq_epi8(a, _mm_or_si128(a, _mm_and_si128(b, _mm_set1_epi8(1)))));
        OP2(13, "pcmpeqw", _mm_cmpeq_epi16(a, _mm_xor_si128(a, _mm_and_si128(b, _mm_set1_epi16(0x0101)))));
        OP2(14, "pcmpeqd", _mm_cmpeq_epi32(a, *m));
        OP2(15, "pcmpgtb", _mm_cmpgt_epi8(a, b));
        OP2(16, "pcmpgtw", _mm_cmpgt_epi16(a, b));
        OP2(17, "pcmpgtd", _mm_cmpgt_epi32(a, *m));
        OP2(18, "pminub", _mm_min_epu8(a, b));
        OP2(19, "pmaxub", _mm_max_epu8(a, *m));
        OP2(20, "pminsw", _mm_min_epi16(a, b));
        OP2(21, "pmaxsw", _mm_max_epi16(a, b));
        OP2(22, "pmullw", _mm_mullo_epi16(a, b));
        OP2(23, "pmuludq", _mm_mul_epu32(a, *m));
        OP2(24, "punpckldq", _mm_unpacklo_epi32(a, b));
        OP2(25, "punpcklqdq", _mm_unpacklo_epi64(a, *m));
        OP2(26, "punpckhqdq", _mm_unpackhi_epi64(a, b));
        OP2(27, "pshufd 0x1b", _mm_shuffle_epi32(a, 0x1b));
        OP2(28, "pshufd 0x08", _mm_shuffle_epi32(*m, 0x08));
        OP2(29, "psllw 1", _mm_slli_epi16(a, 1));
        OP2(30, "psllw 15", _mm_slli_epi16(a, 15));
        OP2(31, "psllw 16", SHIFT("psllw", 16, a));
        OP2(32, "psrlw 7", _mm_srli_epi16(a, 7));
        OP2(33, "psraw 3", _mm_srai_epi16(a, 3));
        OP2(34, "psraw 20", SHIFT("psraw", 20, a));
        OP2(35, "pslld 5", _mm_slli_epi32(a, 5));
        OP2(36, "psrld 31", _mm_srli_epi32(a, 31));
        OP2(37, "psrld 32", SHIFT("psrld", 32, a));
        OP2(38, "psrad 31", _mm_srai_epi32(a, 31));
        OP2(39, "psrad 40", SHIFT("psrad", 40, a));
        OP2(40, "psllq 1", _mm_slli_epi64(a, 1));
        OP2(41, "psllq 63", SHIFT("psllq", 63, a));
        OP2(42, "psrlq 32", _mm_srli_epi64(a, 32));
        OP2(43, "psrlq 33", _mm_srli_epi64(b, 33));
        OP2(44, "psrlq 64", SHIFT("psrlq", 64, a));
        OP2(45, "psrldq 3", _mm_srli_si128(a, 3));
        OP2(46, "pslldq 9", _mm_slli_si128(a, 9));
        OP2(47, "pmovmskb", _mm_cvtsi32_si128(_mm_movemask_epi8(a)));
        /* the destination is also the source */
        __m128i c = a;
        c = _mm_add_epi32(c, c);
        c = _mm_shuffle_epi32(c, 0x93);
        c = _mm_unpacklo_epi32(c, c);
        c = _mm_mul_epu32(c, c);
        c = _mm_andnot_si128(c, c);
        OP2(48, "aliased", _mm_xor_si128(c, _mm_sub_epi64(a, a)));
        /* a chain like the vectorized 32-bit multiply gcc emits for SSE2 */
        __m128i p = _mm_mul_epu32(a, b), q = _mm_mul_epu32(_mm_srli_epi64(a, 32), _mm_srli_epi64(b, 32));
        OP2(49, "mullo32", _mm_unpacklo_epi32(_mm_shuffle_epi32(p, 8), _mm_shuffle_epi32(q, 8)));
    }
    for (int i = 0; i < nops; i++)
        printf("%-12s %016llx\n", names[i], (unsigned long long)sums[i]);
    return 0;
}
