/* A guest that uses the MTE instructions itself (built with -march=armv8.5-a+memtag): random
 * tags (IRG, GMI), tag arithmetic (ADDG, SUBP), tag stores (STG, ST2G, STGP) and loads (LDG),
 * on an mmap'd page and on a heap object. Under emsan's hw-tags mode Unicorn traps each of them
 * as undefined and emsan does their work; the tag checks then catch the three bad accesses. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#define NOINLINE __attribute__((noinline))
static volatile char sink;

static char *irg(void *p, uint64_t exclude) { char *r; __asm__ volatile("irg %0, %1, %2" : "=r"(r) : "r"(p), "r"(exclude)); return r; }  /* @irg */
static uint64_t gmi(void *p, uint64_t m) { uint64_t r; __asm__ volatile("gmi %0, %1, %2" : "=r"(r) : "r"(p), "r"(m)); return r; }
static char *addg16_1(void *p) { char *r; __asm__ volatile("addg %0, %1, #16, #1" : "=r"(r) : "r"(p)); return r; }
static int64_t subp(void *a, void *b) { int64_t r; __asm__ volatile("subp %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }
static void stg(void *p) { __asm__ volatile("stg %0, [%0]" : : "r"(p) : "memory"); }
static void st2g(void *p) { __asm__ volatile("st2g %0, [%0]" : : "r"(p) : "memory"); }
static void stgp32(void *p, uint64_t a, uint64_t b) { __asm__ volatile("stgp %1, %2, [%0, #32]" : : "r"(p), "r"(a), "r"(b) : "memory"); }
static char *ldg(void *p) { char *r = p; __asm__ volatile("ldg %0, [%1]" : "+r"(r) : "r"(p) : "memory"); return r; }
static unsigned tag_of(const void *p) { return (unsigned)((uintptr_t)p >> 56) & 0xF; }

NOINLINE void mte_demo(void)
{
    char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *p = irg(page, 1);                       /* any tag but 0 @first_mte */
    unsigned t = tag_of(p);
    stg(p);
    stg(p + 16);
    p[0] = 1;
    p[31] = 2;                                    /* granules 0 and 1 carry the tag */
    p[32] = 3;                                    /* BUG 1: granule 2 still has tag 0 @bug1 */
    char *q = addg16_1(p);                        /* q = p + 16 with tag t + 1 */
    printf("addg: tag %s, offset %lld\n", tag_of(q) == ((t + 1) & 15) ? "ok" : "wrong", (long long)subp(q, p));
    sink = q[0];                                  /* BUG 2: granule 1 has tag t @bug2 */
    char *r = ldg(page);
    printf("ldg: %s\n", tag_of(r) == t ? "ok" : "wrong");
    printf("gmi: %s\n", gmi(p, 0) == (1ULL << t) ? "ok" : "wrong");
    char *u = irg(page, (1ULL << t) | 1);         /* a different tag */
    st2g(u);                                      /* retag granules 0 and 1 */
    stgp32(u, 0x1111, 0x2222);                    /* granule 2: data and tag */
    printf("stgp: %s\n", ((volatile uint64_t *)u)[4] == 0x1111 && ((volatile uint64_t *)u)[5] == 0x2222 ? "ok" : "wrong");
    sink = u[40];
    sink = p[1];                                  /* BUG 3: p's tag is stale @bug3 */

    char *h = malloc(32);                         /* emsan's heap: the tags emsan's allocator set */
    h[31] = 0;
    char *h2 = irg(h, 1ULL << tag_of(h));
    stg(h2);                                      /* the guest retags the first granule */
    h2[0] = 1;
    sink = h[0];                                  /* BUG 4: the heap pointer's tag is stale @bug4 */
    stg(h);
    free(h);
}

int main(void)
{
    mte_demo();
    printf("done\n");
    return 0;
}
