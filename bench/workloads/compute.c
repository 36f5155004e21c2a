/* Compute-bound workload: integer hashing, a small matrix product and a bitwise CRC,
 * all on data that fits in a few KiB. Almost no calls into libc, few memory accesses.
 * Usage: compute [ITERATIONS]   (prints a checksum so the work cannot be optimized away) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define N 16

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint32_t crc32_bits(uint32_t crc, uint64_t v)
{
    for (int i = 0; i < 64; i++) {
        uint32_t bit = (uint32_t)((v >> i) ^ crc) & 1u;
        crc = (crc >> 1) ^ (0xEDB88320u & -bit);
    }
    return crc;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000;
    static int32_t a[N][N], b[N][N], c[N][N];
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    uint32_t crc = 0xFFFFFFFFu;

    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            a[i][j] = (int32_t)(mix((uint64_t)(i * N + j)) & 0xff) - 128;
            b[i][j] = (int32_t)(mix((uint64_t)(j * N + i + 7)) & 0xff) - 128;
        }
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                int32_t s = 0;
                for (int k = 0; k < N; k++)
                    s += a[i][k] * b[k][j];
                c[i][j] = s;
            }
        a[it % N][(it / N) % N] ^= c[(it + 3) % N][it % N] & 0x7f;
        for (int r = 0; r < 16; r++)
            h = mix(h + (uint64_t)c[r][(r + it) % N]);
        crc = crc32_bits(crc, h);
    }
    printf("compute %ld: h=%016llx crc=%08x\n", iters, (unsigned long long)h, crc ^ 0xFFFFFFFFu);
    return 0;
}
