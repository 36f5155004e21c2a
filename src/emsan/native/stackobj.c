/* --stack-checks full: the local variables of the frame a range on the stack belongs to.
 *
 * Generic mode has no stack shadow, but the shadow call stack (scs.c) knows every live frame: an
 * entry (return address, slot) per call, so frame j, the function holding entry j's return
 * address, lies between the stack pointer its call left (x86-64: the slot + 8; arm64: the sp at
 * the `bl`) and the slot of the call that made frame j (entry j - 1): that slot holds frame j's
 * own return address (x86-64), or starts its caller's frame record (arm64), and it is also frame
 * j's canonical frame address (CFA) less 8 (x86-64) or its CFA (arm64). Python reads, once per
 * return address, the variables DWARF places at a fixed offset from the CFA there
 * (sanitizer/stackobjects.py); a range that starts in one of them and runs past it, or ends in
 * one it starts below, is a stack-out-of-bounds, as is one that reaches the frame's saved return
 * address. Frames whose CFA the shadow stack cannot vouch for (frame_verified(): neither a
 * direct call to the function DWARF names nor its CFI rule confirms it, as for a signal
 * handler's frame or one the shadow stack missed) are checked against their bounds only. The
 * cost is one table lookup per intercepted call or system call touching the stack; Python runs
 * once per frame return address. */
#include "runtime.h"

struct sobj_fn {
    uint64_t pc;                       /* 0: empty slot */
    uint64_t entry;                    /* the function's first instruction, 0: unknown */
    int cfa_reg; int64_t cfa_off;      /* the CFI rule of its CFA at the call */
    uint64_t ok_cfa, ok_caller;        /* the last frame verified (a loop touches the same one) */
    int64_t *lo, *hi;                  /* objects, CFA-relative */
    int n;
};

struct sobj_state {
    void (*lookup)(uint64_t);
    struct sobj_fn *tab; size_t cap, used;
    emsan_sobj_stats stats;
};

EXPORT void emsan_sobj_enable(emsan_runtime *rt, void (*lookup)(uint64_t))
{
    struct sobj_state *so = rt->sobj;
    if (!so) {
        if (!(so = calloc(1, sizeof *so))) { out_of("host memory"); return; }
        so->cap = 256;
        if (!(so->tab = calloc(so->cap, sizeof *so->tab))) { free(so); out_of("host memory"); return; }
        rt->sobj = so;
    }
    so->lookup = lookup;
}

void sobj_destroy(rt_t *rt)
{
    struct sobj_state *so = rt->sobj;
    if (!so) return;
    for (size_t i = 0; i < so->cap; i++) { free(so->tab[i].lo); free(so->tab[i].hi); }
    free(so->tab); free(so);
    rt->sobj = NULL;
}

static inline size_t slot_of(uint64_t pc, size_t cap) { return (size_t)((pc * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1); }

static struct sobj_fn *find(struct sobj_state *so, uint64_t pc)
{
    for (size_t i = slot_of(pc, so->cap);; i = (i + 1) & (so->cap - 1)) {
        if (so->tab[i].pc == pc) return &so->tab[i];
        if (!so->tab[i].pc) return NULL;
    }
}

static void insert(struct sobj_state *so, struct sobj_fn f)
{
    size_t i = slot_of(f.pc, so->cap);
    while (so->tab[i].pc) i = (i + 1) & (so->cap - 1);
    so->tab[i] = f;
}

EXPORT void emsan_sobj_add(emsan_runtime *rt, uint64_t pc, uint64_t entry, int cfa_reg, int64_t cfa_off,
                           const int64_t *lo, const int64_t *hi, int n)
{
    struct sobj_state *so = rt->sobj;
    if (!so || !pc || find(so, pc)) return;
    if (2 * (so->used + 1) > so->cap) {            /* at most half full */
        struct sobj_fn *old = so->tab;
        size_t ocap = so->cap;
        struct sobj_fn *tab = calloc(ocap * 2, sizeof *tab);
        if (!tab) { out_of("host memory"); return; }
        so->tab = tab; so->cap = ocap * 2;
        for (size_t i = 0; i < ocap; i++) if (old[i].pc) insert(so, old[i]);
        free(old);
    }
    struct sobj_fn f = {pc, entry, cfa_reg, cfa_off, 0, 0, NULL, NULL, n > 0 ? n : 0};
    if (f.n) {
        f.lo = malloc((size_t)f.n * sizeof *f.lo);
        f.hi = malloc((size_t)f.n * sizeof *f.hi);
        if (!f.lo || !f.hi) { free(f.lo); free(f.hi); out_of("host memory"); return; }
        memcpy(f.lo, lo, (size_t)f.n * sizeof *lo);
        memcpy(f.hi, hi, (size_t)f.n * sizeof *hi);
    }
    insert(so, f);
    so->used++;
}

EXPORT void emsan_sobj_get_stats(emsan_runtime *rt, emsan_sobj_stats *out)
{
    memset(out, 0, sizeof *out);
    if (rt->sobj) *out = rt->sobj->stats;
}

/* The target of the direct call whose return address is ret, or 0 (an indirect call). */
static uint64_t call_target(rt_t *rt, uint64_t ret)
{
    if (rt->arm64) {
        uint32_t insn;
        if (mem_get(rt->uc, ret - 4, &insn, 4) || (insn & 0xFC000000) != 0x94000000) return 0;   /* bl */
        int64_t imm = (int64_t)((uint64_t)(insn & 0x03FFFFFF) << 38) >> 36;
        return ret - 4 + (uint64_t)imm;
    }
    uint8_t b[5];
    if (mem_get(rt->uc, ret - 5, b, 5) || b[0] != 0xE8) return 0;                               /* call rel32 */
    int32_t rel;
    memcpy(&rel, b + 1, 4);
    return ret + (uint64_t)(int64_t)rel;
}

/* Is cfa frame j's CFA, as the shadow stack says (frame_lo: its sp at the call, caller_ret: the
 * return address of the call that made it)? Yes if that call is a direct call to the function
 * DWARF names, or if the function's CFI rule at the call gives cfa: from its sp, or from a frame
 * pointer found on the frame-record chain. Not when a frame is missing in between (a signal
 * handler's, one entered without a call), where its objects would be misplaced. */
static int verify(rt_t *rt, const struct sobj_fn *f, uint64_t cfa, uint64_t frame_lo, uint64_t caller_ret)
{
    if (f->entry && call_target(rt, caller_ret) == f->entry) return 1;
    if (f->cfa_reg == 1) return frame_lo + (uint64_t)f->cfa_off == cfa;
    if (f->cfa_reg != 2) return 0;
    uint64_t want = cfa - (uint64_t)f->cfa_off, fp = reg(rt, EMSAN_REG_FP);
    for (int i = 0; i < 256 && fp >= rt->stack_lo && fp < rt->stack_hi && fp <= want; i++) {
        if (fp == want) return 1;
        uint64_t next;
        if (mem_get(rt->uc, fp, &next, 8) || next <= fp) return 0;
        fp = next;
    }
    return 0;
}

static int frame_verified(rt_t *rt, struct sobj_fn *f, uint64_t cfa, uint64_t frame_lo, uint64_t caller_ret)
{
    if (f->ok_cfa == cfa && f->ok_caller == caller_ret) return 1;
    if (!verify(rt, f, cfa, frame_lo, caller_ret)) return 0;
    f->ok_cfa = cfa;
    f->ok_caller = caller_ret;
    return 1;
}

/* Which of f's objects the range [off, end) (CFA-relative) overruns: -1 if none does, or if it
 * starts in one it fits (another may overlap it: a union, stack slots shared by scopes), or
 * touches none. Overflow: it starts inside objects and fits none of them (the largest is
 * named); underflow: it starts outside every object and ends inside one. */
static int overrun(const struct sobj_fn *f, int64_t off, int64_t end)
{
    int best = -1;
    for (int i = 0; i < f->n; i++) {
        if (f->lo[i] <= off && off < f->hi[i]) {
            if (end <= f->hi[i]) return -1;
            if (best < 0 || f->hi[i] - f->lo[i] > f->hi[best] - f->lo[best]) best = i;
        }
    }
    if (best >= 0) return best;
    for (int i = 0; i < f->n; i++)
        if (off < f->lo[i] && end > f->lo[i] && end <= f->hi[i]) return i;
    return -1;
}

int stack_objects_check(rt_t *rt, uint64_t addr, uint64_t size, int is_write, uint64_t pc, int fn, int at_entry)
{
    struct sobj_state *so = rt->sobj;
    addr = guest_addr(rt, addr);
    if (!so || addr >= rt->stack_hi || addr < rt->stack_lo || addr + size < addr) return 0;
    uint64_t sp = reg(rt, EMSAN_REG_SP);
    if (addr < sp) return 0;
    so->stats.checks++;
    const uint64_t *e;
    size_t n = scs_entries(rt, &e);
    uint64_t adj = rt->arm64 ? 0 : 8;
    /* At an intercepted function's entry its caller is a frame too, whether or not the shadow
     * stack has pushed the call yet: {the return address, sp}. */
    uint64_t top_ret = 0, top_sp = sp;
    int virt = 0;
    if (at_entry) {
        if (rt->arm64) top_ret = reg(rt, EMSAN_REG_LR) & RET_MASK;
        else if (mem_get(rt->uc, sp, &top_ret, 8)) top_ret = 0;
        virt = top_ret && !(n && e[2 * (n - 1)] == top_ret && e[2 * (n - 1) + 1] == sp);
    }
#define RET(i) ((size_t)(i) < n ? e[2 * (i)] : top_ret)
#define SLOT(i) ((size_t)(i) < n ? e[2 * (i) + 1] : top_sp)
    size_t total = n + (size_t)virt;
    if (!total) return 0;
    size_t j = total - 1;           /* frame j: [SLOT(j) + adj, SLOT(j - 1) + adj) */
    uint64_t end = addr + size;
    /* The frame the range starts in; one starting below every frame (in the running function's
     * own) that ends in the innermost is an underflow of that frame. */
    while (j > 0 && addr >= SLOT(j - 1) + adj) j--;
    int below = addr < SLOT(j) + adj;
    if (below && (j != total - 1 || end <= SLOT(j) + adj)) return 0;
    if (j == 0) return 0;           /* the outermost frame has no known end (argv, environ lie above) */
    uint64_t frame_pc = RET(j), frame_lo = SLOT(j) + adj, limit = SLOT(j - 1), cfa = limit + adj;
    if (limit <= frame_lo) return 0;          /* not a frame: the shadow stack is out of step */
    so->stats.frames++;
    struct sobj_fn *f = find(so, frame_pc);
    if (!f && so->lookup) {
        so->stats.lookups++;
        so->lookup(frame_pc);
        f = find(so, frame_pc);
    }
    int obj = -1;
    if (f && f->n && frame_verified(rt, f, cfa, frame_lo, RET(j - 1)))
        obj = overrun(f, (int64_t)(addr - cfa), (int64_t)(end - cfa));
    if (obj < 0 && (below || end <= limit)) return 0;
#undef RET
#undef SLOT
    so->stats.reports++;
    if (!pc) pc = reg(rt, EMSAN_REG_PC);
    emsan_error *err = error_new(rt, EMSAN_ERR_STACK_OOB, addr, size, is_write, pc, stack_here(rt, pc, at_entry));
    err->fn = fn;
    err->frame_pc = frame_pc;
    err->frame_cfa = cfa;
    err->frame_lo = frame_lo;
    err->frame_obj = obj;
    error_raise(rt);
    return 1;
}
