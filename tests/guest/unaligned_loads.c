/* Unaligned loads near a heap object's end (tests/test_false_reports.py). The engine performs an
 * unaligned load from emsan's checking (MMIO) view as the aligned loads around it, which reach
 * past the bytes the instruction reads: those loads are no bug.
 *   inbounds [N]  every unaligned 2/4/8/16-byte load that fits in objects of 1..N (80) bytes
 *   over SIZE  one unaligned SIZE-byte load at offset 61 of a 62-byte object (reaches past it) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct __attribute__((packed)) u16 { uint16_t v; };
struct __attribute__((packed)) u32 { uint32_t v; };
struct __attribute__((packed)) u64 { uint64_t v; };

static __attribute__((noinline)) uint64_t load(const uint8_t *p, int size)
{
    switch (size) {
    case 2: return ((const struct u16 *)p)->v;    /* @load.2 */
    case 4: return ((const struct u32 *)p)->v;    /* @load.4 */
    case 8: return ((const struct u64 *)p)->v;    /* @load.8 */
    default: {                              /* one 16-byte vector load */
        uint64_t r;
#if defined(__x86_64__)
        __asm__ volatile("movdqu (%1), %%xmm0\n movq %%xmm0, %0" : "=r"(r) : "r"(p) : "xmm0", "memory"); /* @load.16.x86_64 */
#else
        __asm__ volatile("ldr q0, [%1]\n fmov %0, d0" : "=r"(r) : "r"(p) : "v0", "memory");   /* @load.16.arm64 */
#endif
        return r;
    }
    }
}

int main(int argc, char **argv)
{
    static const int sizes[] = {2, 4, 8, 16};
    uint64_t sum = 0;
    if (argc > 1 && strcmp(argv[1], "inbounds") == 0) {
        int max = argc > 2 ? atoi(argv[2]) : 80;
        for (int n = 1; n <= max; n++) {
            uint8_t *p = malloc(n);
            for (int i = 0; i < n; i++) p[i] = (uint8_t)(i * 7 + n);
            for (int s = 0; s < 4; s++)
                for (int o = 0; o + sizes[s] <= n; o++)
                    sum += load(p + o, sizes[s]);
            free(p);
        }
        printf("inbounds %llu\n", (unsigned long long)sum);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "over") == 0) {
        uint8_t *p = malloc(62);
        memset(p, 1, 62);
        sum = load(p + 61, atoi(argv[2]));
        printf("over %llu\n", (unsigned long long)sum);
        free(p);
        return 0;
    }
    return 2;
}
