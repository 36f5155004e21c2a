/* --stacks cfi: unwinding from .eh_frame/.debug_frame tables, for code built without frame
 * pointers. Python (sanitizer/stacks.py) turns each module's CFI into sorted rows once (and
 * caches them on disk); here each frame costs one binary search and one or two guest reads. */
#include "runtime.h"

struct cfi_mod { uint64_t lo, hi; emsan_cfi_row *rows; size_t n; };
#define CACHE 4096
struct cfi_state {
    struct cfi_mod *mods; size_t nmods;
    struct { uint64_t pc; const emsan_cfi_row *row; } cache[CACHE];     /* pc -> row, direct-mapped */
};

void cfi_destroy(rt_t *rt)
{
    struct cfi_state *c = rt->cfi;
    if (!c) return;
    for (size_t i = 0; i < c->nmods; i++) free(c->mods[i].rows);
    free(c->mods); free(c);
    rt->cfi = NULL;
}

EXPORT void emsan_cfi_add_module(emsan_runtime *rt, uint64_t lo, uint64_t hi, const emsan_cfi_row *rows, size_t n)
{
    if (!rt->cfi) rt->cfi = calloc(1, sizeof *rt->cfi);
    struct cfi_state *c = rt->cfi;
    for (size_t i = 0; i < c->nmods; i++)
        if (c->mods[i].lo < hi && lo < c->mods[i].hi) return;
    memset(c->cache, 0, sizeof c->cache);     /* row pointers move */
    c->mods = realloc(c->mods, (c->nmods + 1) * sizeof *c->mods);
    size_t i = c->nmods++;
    while (i > 0 && c->mods[i - 1].lo > lo) { c->mods[i] = c->mods[i - 1]; i--; }
    c->mods[i].lo = lo; c->mods[i].hi = hi; c->mods[i].n = n;
    c->mods[i].rows = malloc((n ? n : 1) * sizeof *rows);
    memcpy(c->mods[i].rows, rows, n * sizeof *rows);
}

static const emsan_cfi_row *search_row(struct cfi_state *c, uint64_t pc);

static const emsan_cfi_row *find_row(struct cfi_state *c, uint64_t pc)
{
    if (!c) return NULL;
    size_t k = (pc ^ (pc >> 12)) & (CACHE - 1);
    if (c->cache[k].pc == pc) return c->cache[k].row;
    const emsan_cfi_row *r = search_row(c, pc);
    c->cache[k].pc = pc;
    c->cache[k].row = r;
    return r;
}

static const emsan_cfi_row *search_row(struct cfi_state *c, uint64_t pc)
{
    struct cfi_mod *m = range_find(c->mods, c->nmods, sizeof *c->mods, pc);
    if (!m || !m->n || pc < m->rows[0].pc) return NULL;
    size_t lo = 0, hi = m->n;                /* last row with row.pc <= pc */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (m->rows[mid].pc <= pc) lo = mid; else hi = mid;
    }
    return m->rows[lo].cfa_reg ? &m->rows[lo] : NULL;
}


/* The stack above sp is read in 256-byte chunks, each at most once per trace (a guest read
 * costs the same for 8 bytes as for 256); reads beyond the window go to the engine. */
#define CHUNK 256
#define NCHUNK 16
struct window { uint64_t lo; uint32_t loaded; uint64_t buf[NCHUNK][CHUNK / 8]; };

static inline int rd(void *uc, struct window *w, uint64_t a, uint64_t *out)
{
    uint64_t off = a - w->lo;
    if (a >= w->lo && off < NCHUNK * CHUNK && !(a & 7)) {
        unsigned c = (unsigned)(off / CHUNK);
        if (!(w->loaded & (1u << c))) {
            if (mem_get(uc, w->lo + c * CHUNK, w->buf[c], CHUNK)) return mem_get(uc, a, out, 8);
            w->loaded |= 1u << c;
        }
        *out = w->buf[c][(off % CHUNK) / 8];
        return 0;
    }
    return mem_get(uc, a, out, 8);
}

int stack_cfi(rt_t *rt, uint64_t pc, int at_entry, uint64_t *frames)
{
    void *uc = rt->uc;
    int n = 0;
    uint64_t sp = reg_get(uc, rt->regs[EMSAN_REG_SP]);
    struct window w;
    w.lo = sp & ~(uint64_t)(CHUNK - 1);
    w.loaded = 0;
    uint64_t fp = reg_get(uc, rt->regs[EMSAN_REG_FP]);
    uint64_t lr = rt->arm64 ? reg_get(uc, rt->regs[EMSAN_REG_LR]) & RET_MASK : 0;
    uint64_t cur = pc ? pc : reg_get(uc, rt->regs[EMSAN_REG_PC]);
    if (pc) frames[n++] = pc;
    if (at_entry) {
        /* At a function's first instruction the return address is certain whatever the table
         * says: [sp] on x86-64 (the CFA is sp + 8), LR on arm64. */
        uint64_t ret = lr;
        if (!rt->arm64) { rd(uc, &w, sp, &ret); sp += 8; }
        if (!ret) return n;
        frames[n++] = ret;
        cur = ret;
    }
    int first = !at_entry;
    while (n < EMSAN_STACK_DEPTH) {
        /* a return address points after the call: look up the call itself */
        const emsan_cfi_row *r = find_row(rt->cfi, first ? cur : cur - 1);
        uint64_t ret = 0, cfa;
        if (r) {
            cfa = (r->cfa_reg == 2 ? fp : sp) + (int64_t)r->cfa_off;
            if (r->ra_off) {
                if (rd(uc, &w, cfa + (int64_t)r->ra_off, &ret)) break;
            } else if (rt->arm64 && first) {
                ret = lr;                    /* a leaf: the return address is still in LR */
            } else {
                break;
            }
            if (r->fp_off) {
                uint64_t nfp;
                if (rd(uc, &w, cfa + (int64_t)r->fp_off, &nfp)) break;
                fp = nfp;
            }
        } else {
            /* no table: a frame record, as --stacks fp would read it */
            uint64_t rec[2];
            if (fp < rt->stack_lo || fp + 16 > rt->stack_hi || (fp & 7) || rd(uc, &w, fp, &rec[0]) || rd(uc, &w, fp + 8, &rec[1])) break;
            cfa = fp + 16;
            ret = rec[1];
            fp = rec[0];
        }
        ret &= RET_MASK;
        if (!ret || cfa < sp || cfa > rt->stack_hi) break;
        frames[n++] = ret;
        sp = cfa;
        cur = ret;
        first = 0;
    }
    return n;
}
