/* A shadow call stack emsan keeps while the guest runs (--stacks scs).
 *
 * A translation block always ends at a call or a return, so a native UC_HOOK_BLOCK callback
 * looks up what the block's last instruction is (a per-module table of block ends from a
 * capstone sweep, made once per module in Python) and acts at the start of the next block:
 * after a call it pushes (return address, stack pointer); after a return it pops the entry the
 * guest returned to. Anything else that unwinds the stack (longjmp, C++ exceptions, signal
 * returns) is caught by the stack pointer: an entry whose frame lies below the current stack
 * pointer is dead. The interception of malloc never executes its `ret`: a block starting at an
 * intercepted entry is treated as returning at once. Collection copies the entries: O(depth).
 *
 * --stack-checks ret compares each return with the entry of the call it returns from, as a
 * hardware shadow stack does: the entry whose stack pointer says "this is the frame being
 * popped" (x86-64: the slot the call pushed its return address to, which `ret` pops; arm64: the
 * caller's stack pointer at the `bl`, which a return restores). A return to another address from
 * that very frame is a return through an overwritten return address, reported before any code at
 * the target runs. Everything else that moves the stack pointer (longjmp, unwinders, signal
 * frames, swapcontext, code emsan has no table for) pops from a slot no live entry holds: the
 * stack-pointer resynchronization handles it and nothing is compared, so those never report.
 * Tail calls reuse the caller's entry (same frame, same return address).
 *
 * --stacks x18 reads the arm64 guest's own shadow call stack instead (-fsanitize=shadow-call-stack). */
#include "runtime.h"


#define K_CALL 1
#define K_RET 2
#define K_JMP 4
#define K_FUNC 8
#define K_INTERCEPT 16
#define K_LOCAL 32             /* reached only by a conditional branch (sanitizer/stacks.py) */
#define K_ICALL 64             /* the end of a direct call to an intercepted function */

#define P_NONE 0
#define P_CALL 1
#define P_RET 2
#define P_JMP 3
#define P_INTERCEPT 4

struct scs_call { uint32_t ret, target; };        /* offsets from lo, sorted by target */
struct scs_mod { uint64_t lo, hi; uint8_t *kinds; struct scs_call *calls; size_t ncalls; };
struct scs_ent { uint64_t ret, sp; };
/* Beside each entry: an id naming the whole stack from the bottom through it, and its parent's.
 * An entry is pushed with the id its slot held before when the slot held the same return address
 * over the same parent (a loop calling from the same site): entries below a live entry cannot
 * change, so equal ids mean equal stacks, and a trace is remembered by (top id, pc) instead of
 * hashed and compared in the depot at every allocation and free (stack_scs_save). */
struct scs_id { uint64_t id, parent; };
#define MEMO 1024

struct scs_state {
    struct scs_mod *mods; size_t nmods;
    struct scs_mod *last;              /* the module of the previous block */
    struct scs_ent *st; size_t depth, cap;
    struct scs_id *ids;                /* cap of them */
    uint64_t overflow;                 /* pushes beyond cap, still balanced by pops */
    int pending; uint64_t pend_ret;    /* P_CALL: the return address; P_RET: the block's end */
    struct vec64 marks;                /* intercepts outside any table yet */
    uint64_t pushes, pops, resyncs;
    int ret_checks;                    /* --stack-checks ret */
    uint64_t checks, mismatches;
    uint64_t next_id;
    struct { uint64_t id, pc, call; uint32_t hd; } memo[MEMO];  /* (top id, pc, call) -> handle */
    uint64_t memo_hits;
};

static struct scs_state *scs_get(rt_t *rt)
{
    if (!rt->scs) {
        rt->scs = calloc(1, sizeof *rt->scs);
        rt->scs->cap = 1 << 14;
        rt->scs->st = malloc(rt->scs->cap * sizeof *rt->scs->st);
        rt->scs->ids = calloc(rt->scs->cap, sizeof *rt->scs->ids);
    }
    return rt->scs;
}

/* Each guest thread has a call stack of its own (os/linux/threads.py): the scheduler swaps the
 * per-thread part in and out at each switch; modules, marks and counters are the process's. */
struct emsan_scs_thread {
    struct scs_ent *st; size_t depth, cap;
    struct scs_id *ids;
    uint64_t overflow;
    int pending; uint64_t pend_ret;
    struct scs_mod *last;
};

EXPORT struct emsan_scs_thread *emsan_scs_thread_new(void)
{
    struct emsan_scs_thread *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cap = 1 << 14;
    t->st = malloc(t->cap * sizeof *t->st);
    t->ids = calloc(t->cap, sizeof *t->ids);
    if (!t->st || !t->ids) { free(t->st); free(t->ids); free(t); return NULL; }
    return t;
}

EXPORT void emsan_scs_thread_swap(emsan_runtime *rt, struct emsan_scs_thread *t)
{
    struct scs_state *s = scs_get(rt);
    struct emsan_scs_thread cur = {s->st, s->depth, s->cap, s->ids, s->overflow, s->pending, s->pend_ret, s->last};
    s->st = t->st; s->depth = t->depth; s->cap = t->cap; s->ids = t->ids; s->overflow = t->overflow;
    s->pending = t->pending; s->pend_ret = t->pend_ret; s->last = t->last;
    *t = cur;
}

EXPORT void emsan_scs_thread_free(struct emsan_scs_thread *t)
{
    if (!t) return;
    free(t->st);
    free(t->ids);
    free(t);
}

void scs_destroy(rt_t *rt)
{
    struct scs_state *s = rt->scs;
    if (!s) return;
    for (size_t i = 0; i < s->nmods; i++) { free(s->mods[i].kinds); free(s->mods[i].calls); }
    free(s->mods); free(s->st); free(s->ids); free(s->marks.v); free(s);
    rt->scs = NULL;
}

void scs_stats(rt_t *rt, emsan_stack_stats *out)
{
    if (!rt->scs) return;
    out->scs_pushes = rt->scs->pushes;
    out->scs_pops = rt->scs->pops;
    out->scs_resyncs = rt->scs->resyncs;
    out->ret_checks = rt->scs->checks;
    out->ret_mismatches = rt->scs->mismatches;
    out->scs_memo_hits = rt->scs->memo_hits;
}

EXPORT void emsan_scs_set_ret_checks(emsan_runtime *rt, int on) { scs_get(rt)->ret_checks = on; }

static inline struct scs_mod *mod_of(struct scs_state *s, uint64_t a)
{
    return range_find(s->mods, s->nmods, sizeof *s->mods, a);
}

static inline uint8_t *kind_ptr(struct scs_state *s, uint64_t a)
{
    struct scs_mod *m = mod_of(s, a);
    return m ? &m->kinds[a - m->lo] : NULL;
}

static inline uint8_t kind_at(struct scs_state *s, uint64_t a)
{
    uint8_t *p = kind_ptr(s, a);
    return p ? *p : 0;
}

/* The kind of `end`, the end of a block that starts in module m (it may lie past m's table). */
static inline uint8_t end_kind(struct scs_state *s, const struct scs_mod *m, uint64_t end)
{
    return end <= m->hi ? m->kinds[end - m->lo] : kind_at(s, end);
}

/* The function at addr is intercepted: its entry, and the ends of the direct calls to it. */
static int mark(struct scs_state *s, uint64_t addr)
{
    struct scs_mod *m = mod_of(s, addr);
    if (!m) return 0;
    m->kinds[addr - m->lo] |= K_INTERCEPT;
    uint32_t t = (uint32_t)(addr - m->lo);
    size_t lo = 0, hi = m->ncalls;             /* the first call with target >= t */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->calls[mid].target < t) lo = mid + 1; else hi = mid;
    }
    for (; lo < m->ncalls && m->calls[lo].target == t; lo++) m->kinds[m->calls[lo].ret] |= K_ICALL;
    return 1;
}

EXPORT void emsan_scs_add_module(emsan_runtime *rt, uint64_t lo, uint64_t hi, const uint8_t *kinds,
                                 const uint8_t *calls, size_t ncalls)
{
    struct scs_state *s = scs_get(rt);
    if (hi <= lo) return;
    for (size_t i = 0; i < s->nmods; i++)
        if (s->mods[i].lo < hi && lo < s->mods[i].hi) return;     /* already known */
    s->mods = realloc(s->mods, (s->nmods + 1) * sizeof *s->mods);
    s->last = NULL;
    size_t i = s->nmods++;
    while (i > 0 && s->mods[i - 1].lo > lo) { s->mods[i] = s->mods[i - 1]; i--; }
    s->mods[i].lo = lo; s->mods[i].hi = hi;
    s->mods[i].kinds = malloc(hi - lo + 1);
    memcpy(s->mods[i].kinds, kinds, hi - lo);
    s->mods[i].kinds[hi - lo] = 0;
    s->mods[i].calls = malloc((ncalls ? ncalls : 1) * sizeof *s->mods[i].calls);
    s->mods[i].ncalls = s->mods[i].calls ? ncalls : 0;      /* without them: every call hooked */
    if (s->mods[i].ncalls) memcpy(s->mods[i].calls, calls, ncalls * sizeof *s->mods[i].calls);
    size_t keep = 0;
    for (size_t j = 0; j < s->marks.n; j++)
        if (!mark(s, s->marks.v[j])) s->marks.v[keep++] = s->marks.v[j];
    s->marks.n = keep;
}

EXPORT void emsan_scs_mark_intercept(emsan_runtime *rt, uint64_t addr)
{
    struct scs_state *s = scs_get(rt);
    if (!mark(s, addr)) vec_push(&s->marks, addr);
}

static inline void push(struct scs_state *s, uint64_t ret, uint64_t sp)
{
    s->pushes++;
    if (s->depth == s->cap) {
        if (s->cap >= (1u << 22)) { s->overflow++; return; }
        struct scs_ent *st = realloc(s->st, 2 * s->cap * sizeof *s->st);
        struct scs_id *ids = st ? realloc(s->ids, 2 * s->cap * sizeof *s->ids) : NULL;
        if (st) s->st = st;
        if (!ids) { s->overflow++; return; }
        memset(ids + s->cap, 0, s->cap * sizeof *ids);
        s->ids = ids;
        s->cap *= 2;
    }
    uint64_t parent = s->depth ? s->ids[s->depth - 1].id : 0;
    struct scs_id *id = &s->ids[s->depth];
    if (!id->id || id->parent != parent || s->st[s->depth].ret != ret) {
        id->id = ++s->next_id;
        id->parent = parent;
    }
    s->st[s->depth].ret = ret;
    s->st[s->depth].sp = sp;
    s->depth++;
}

/* Drop entries whose frame is gone: x86-64 entries hold the slot of the return address
 * (dead once sp is above it), arm64 entries the caller's sp at the call (dead once sp is at
 * or above it, outside a function's entry). */
static inline void resync(struct scs_state *s, uint64_t sp, int inclusive)
{
    while (s->depth && (s->st[s->depth - 1].sp < sp || (inclusive && s->st[s->depth - 1].sp == sp))) {
        s->depth--;
        s->resyncs++;
        s->overflow = 0;
    }
}

/* A return (or an indirect jump) landed on `addr`: pop through the entry it returns to, if it
 * is among the top few; returns 1 if found. */
static inline int pop_to(struct scs_state *s, uint64_t addr)
{
    if (s->overflow) { s->overflow--; s->pops++; return 1; }
    for (size_t k = 0; k < 8 && k < s->depth; k++) {
        if (s->st[s->depth - 1 - k].ret == addr) {
            s->pops++;
            s->resyncs += k;
            s->depth -= k + 1;
            return 1;
        }
    }
    return 0;
}

/* The address of the return instruction a block ending at `end` ends with. */
static uint64_t ret_insn(rt_t *rt, uint64_t end)
{
    if (rt->arm64) return end - 4;
    uint8_t b[3];
    if (mem_get(rt->uc, end - 3, b, 3)) return end - 1;
    if (b[2] == 0xC3) return end - 1 - (b[1] == 0xF2 || b[1] == 0xF3);     /* ret, bnd/rep ret */
    return b[0] == 0xC2 ? end - 3 : end - 1;                                 /* ret imm16 */
}

static void report_ret(rt_t *rt, struct scs_state *s, size_t k, uint64_t target)
{
    uint64_t frames[EMSAN_STACK_DEPTH];
    int n = 0;
    uint64_t pc = ret_insn(rt, s->pend_ret);
    frames[n++] = pc;
    for (size_t j = k; j > 0 && n < EMSAN_STACK_DEPTH; j--) frames[n++] = s->st[j - 1].ret;
    emsan_error *e = error_new(rt, EMSAN_ERR_RET_OVERWRITE, s->st[k - 1].sp, 8, 0, pc, depot_save(rt, frames, n));
    e->ret_expected = s->st[k - 1].ret;
    e->ret_target = target;
    s->mismatches++;
    error_raise(rt);
}

/* A return landed on `addr` (the block before ended in one): compare it with the entry of the
 * frame it pops. 1: handled (popped or reported); 0: not a tracked frame, resynchronize. */
static int check_ret(rt_t *rt, struct scs_state *s, uint64_t addr)
{
    if (s->overflow) return 0;
    uint64_t sp = reg_get(rt->uc, rt->regs[EMSAN_REG_SP]);
    uint64_t key = rt->arm64 ? sp : sp - 8;
    while (s->depth && s->st[s->depth - 1].sp < key) { s->depth--; s->resyncs++; }    /* dead frames */
    if (!s->depth || s->st[s->depth - 1].sp != key) return 0;
    s->checks++;
    size_t k = s->depth;
    for (; k > 0 && s->st[k - 1].sp == key; k--)
        if (s->st[k - 1].ret == addr) {
            s->resyncs += s->depth - k;
            s->depth = k - 1;
            s->pops++;
            return 1;
        }
    /* Was it the return at all, not emsan moving the PC (a signal delivered in between)? */
    uint64_t target = 0;
    if (rt->arm64) target = reg_get(rt->uc, rt->regs[EMSAN_REG_LR]);      /* what the guest returned to */
    else if (mem_get(rt->uc, sp - 8, &target, 8)) return 0;
    if ((target ^ addr) & RET_MASK) return 0;
    k = s->depth;
    s->depth--;                     /* reported once; the guest goes on (--continue) from its caller's view */
    report_ret(rt, s, k, target);
    return 1;
}

EXPORT int emsan_scs_check_fetch(emsan_runtime *rt, uint64_t pc)
{
    struct scs_state *s = rt->scs;
    if (!s || !s->ret_checks || s->pending != P_RET) return 0;
    s->pending = P_NONE;
    uint64_t before = s->mismatches;
    check_ret(rt, s, pc);
    return s->mismatches != before;
}

/* An intercepted function did not return at its entry (a refused allocation: the guest's own
 * function runs, to fail as its library does): push the call to it, as a hooked entry would have
 * (nothing was, for a direct call; an indirect one is still pending). */
void scs_own_code(rt_t *rt)
{
    struct scs_state *s = rt->scs;
    if (!s) return;
    uint64_t sp = reg(rt, EMSAN_REG_SP), ret = 0;
    if (rt->arm64) ret = reg(rt, EMSAN_REG_LR) & RET_MASK;
    else if (mem_get(rt->uc, sp, &ret, 8)) return;
    if (s->pending == P_CALL && s->pend_ret == ret) s->pending = P_NONE;
    if (s->depth && s->st[s->depth - 1].ret == ret && s->st[s->depth - 1].sp == sp) return;   /* pushed */
    resync(s, sp, !rt->arm64);
    push(s, ret, sp);
}

/* A block starting at a return site ran with nothing pending: the call before it returned without
 * a hooked block in between, which only an intercepted function reached by a direct tail jump
 * does (`jmp malloc` ends its caller's frame); that frame's entry is dead if the stack pointer says
 * so (x86-64: its slot is below sp; arm64: sp is back at the call's). In recursion the same site is
 * also reached by a branch inside a deeper frame, where sp is below the entry's: kept. */
static inline void returned_unseen(rt_t *rt, struct scs_state *s, uint64_t addr)
{
    if (!s->depth || s->st[s->depth - 1].ret != addr) return;
    uint64_t sp = reg_get(rt->uc, rt->regs[EMSAN_REG_SP]), esp = s->st[s->depth - 1].sp;
    if (rt->arm64 ? esp == sp : esp < sp) { s->depth--; s->pops++; }
}

EXPORT void emsan_scs_block_cb(void *uc, uint64_t addr, uint32_t size, void *ud)
{
    rt_t *rt = ud;
    struct scs_state *s = rt->scs;
    if (UNLIKELY(!s)) return;
    int pending = s->pending;
    switch (pending) {
    case P_NONE: break;
    case P_CALL: {
        /* At its own return site: the callee ran no hooked block, an intercepted function (the
         * filter leaves their entries unhooked): nothing was pushed, nothing to pop. */
        if (addr == s->pend_ret) break;
        /* the call did happen (the engine may have stopped before it, and run other code) */
        uint64_t sp = reg_get(uc, rt->regs[EMSAN_REG_SP]), ret = 0;
        if (rt->arm64) ret = reg_get(uc, rt->regs[EMSAN_REG_LR]) & RET_MASK;
        else mem_get(uc, sp, &ret, 8);
        if (ret != s->pend_ret) break;
        /* x86-64: an entry in the slot this call just wrote is dead. arm64: an entry with this
         * stack pointer may be the frameless caller's own (swapcontext keeps x30 in x22 around
         * its `bl`), and a return checks it. */
        resync(s, sp, !rt->arm64);
        push(s, s->pend_ret, sp);
        break;
    }
    case P_INTERCEPT:
        if (s->depth && s->st[s->depth - 1].ret == addr) { s->depth--; s->pops++; }
        break;
    case P_RET:
        if (s->ret_checks && check_ret(rt, s, addr)) break;
        if (!pop_to(s, addr)) resync(s, reg_get(uc, rt->regs[EMSAN_REG_SP]), rt->arm64);
        break;
    case P_JMP:
        if (rt->arm64) {
            /* br: a tail call or a PLT stub (to a function's start), a switch, or longjmp */
            if (!pop_to(s, addr) && !(kind_at(s, addr) & K_FUNC))
                resync(s, reg_get(uc, rt->regs[EMSAN_REG_SP]), 1);
        } else {
            resync(s, reg_get(uc, rt->regs[EMSAN_REG_SP]), 0);
        }
        break;
    }
    s->pending = P_NONE;
    struct scs_mod *m = s->last;
    if (!m || addr < m->lo || addr >= m->hi) {
        if (!(m = mod_of(s, addr))) return;
        s->last = m;
    }
    uint8_t start = m->kinds[addr - m->lo];
    /* an intercepted entry hooked all the same (translated before it was marked) */
    if (UNLIKELY(start & K_INTERCEPT)) { s->pending = P_INTERCEPT; return; }
    if (pending == P_NONE && (start & K_CALL)) returned_unseen(rt, s, addr);
    uint64_t end = addr + size;
    uint8_t k = end_kind(s, m, end);
    if (!k) return;
    if (k & K_CALL && !(k & K_ICALL)) { s->pending = P_CALL; s->pend_ret = end; }
    else if (k & K_RET) { s->pending = P_RET; s->pend_ret = end; }
    else if (k & K_JMP) s->pending = P_JMP;
}

/* The engine asks once per translated block whether emsan_scs_block_cb must run at its start
 * (engine/patches/012). It must where something may be pending from the block before (a call's
 * target is a function start, a return's a return site, an indirect jump's anything not known to
 * be reached by conditional branches only), where the block ends in a call, return or indirect
 * jump. Tight loops, most of the blocks run, need none, and neither do intercepted entries (their
 * code never runs) nor both ends of a direct call to one (K_ICALL: nothing is pushed, the trace
 * takes the return address at the entry): per allocation and per free that saves three hooks, a
 * push and a pop. An indirect call to one stays pending until its own return site. Code without
 * a table is always hooked; a wrong "no" can only lose a frame (a push missed), never report. */
EXPORT _Bool emsan_scs_block_filter(void *uc, uint64_t addr, uint32_t size, void *ud)
{
    (void)uc;
    rt_t *rt = ud;
    struct scs_state *s = rt->scs;
    struct scs_mod *m = s ? mod_of(s, addr) : NULL;
    if (!m) return 1;
    uint8_t start = m->kinds[addr - m->lo];
    if (start & K_INTERCEPT) return 0;
    if (start & K_ICALL) start = (uint8_t)((start & ~(K_CALL | K_ICALL)) | K_LOCAL);
    if (!(start & K_LOCAL) || (start & (K_FUNC | K_CALL))) return 1;
    uint8_t end = end_kind(s, m, addr + size);
    if (end & K_ICALL) end &= (uint8_t)~K_CALL;
    return (end & (K_CALL | K_RET | K_JMP)) != 0;
}

size_t scs_entries(rt_t *rt, const uint64_t **pairs)
{
    struct scs_state *s = rt->scs;
    if (!s || s->overflow) return 0;
    *pairs = (const uint64_t *)s->st;
    return s->depth;
}

/* At an intercepted function's entry (nothing pushed for the call to it): its return address,
 * the innermost caller's frame, unless the top entry is that call's (reached through a hooked
 * block, a PLT stub); else 0. */
static uint64_t entry_frame(rt_t *rt, struct scs_state *s, int at_entry)
{
    if (!at_entry) return 0;
    uint64_t sp = reg(rt, EMSAN_REG_SP), ret = 0;
    if (rt->arm64) ret = reg(rt, EMSAN_REG_LR) & RET_MASK;
    else if (mem_get(rt->uc, sp, &ret, 8)) return 0;
    if (s->depth && s->st[s->depth - 1].ret == ret && s->st[s->depth - 1].sp == sp) return 0;
    return ret;
}

static int stack_scs(rt_t *rt, uint64_t pc, uint64_t call, uint64_t *frames)
{
    struct scs_state *s = rt->scs;
    int n = 0;
    if (pc) frames[n++] = pc;
    if (!s) return n;
    if (call) frames[n++] = call;
    for (size_t k = s->depth; k > 0 && n < EMSAN_STACK_DEPTH; k--)
        frames[n++] = s->st[k - 1].ret;
    return n;
}

/* stack_scs's trace of the current stack, saved in the depot: remembered by (top id, entry
 * frame, pc). */
uint32_t stack_scs_save(rt_t *rt, uint64_t pc, int at_entry)
{
    struct scs_state *s = rt->scs;
    uint64_t frames[EMSAN_STACK_DEPTH];
    if (!s) return depot_save(rt, frames, stack_scs(rt, pc, 0, frames));
    uint64_t call = entry_frame(rt, s, at_entry);
    if (rt->no_depot) return depot_save(rt, frames, stack_scs(rt, pc, call, frames));
    uint64_t id = s->depth ? s->ids[s->depth - 1].id : 0;
    uint64_t h = (id * 0x9E3779B97F4A7C15ULL) ^ (call * 0xBF58476D1CE4E5B9ULL) ^ pc;
    size_t k = (size_t)(h ^ (h >> 29)) & (MEMO - 1);
    if (s->memo[k].id == id && s->memo[k].pc == pc && s->memo[k].call == call && s->memo[k].hd) {
        s->memo_hits++;
        return s->memo[k].hd;
    }
    uint32_t hd = depot_save(rt, frames, stack_scs(rt, pc, call, frames));
    s->memo[k].id = id;
    s->memo[k].pc = pc;
    s->memo[k].call = call;
    s->memo[k].hd = hd;
    return hd;
}

/* arm64 -fsanitize=shadow-call-stack: instrumented prologues store x30 at [x18] and post-increment
 * it. At an allocator's entry LR is the return into the caller, [x18 - 8] the caller's own return
 * address, and so on down to the region's zero-filled start (or an unmapped page). Pointer-
 * authentication bits are stripped (user addresses are below 2^48). */
int stack_x18(rt_t *rt, uint64_t pc, uint64_t *frames)
{
    int n = 0;
    void *uc = rt->uc;
    if (pc) frames[n++] = pc;
    uint64_t lr = reg_get(uc, rt->regs[EMSAN_REG_LR]) & RET_MASK;
    if (lr) frames[n++] = lr;
    if (!rt->arm64 || rt->ngprs <= 18) return n;
    uint64_t top = reg_get(uc, rt->gprs[18]);            /* x18 */
    if ((top & 7) || top < 4096) return n;
    /* page by page from the top: the page holding [x18 - 8] is mapped, the one below may not be */
    uint64_t a = top, buf[512];
    while (n < EMSAN_STACK_DEPTH && a > 4096) {
        uint64_t lo = (a - 8) & ~4095ULL, want = (uint64_t)(EMSAN_STACK_DEPTH - n);
        if (a - lo > want * 8) lo = a - want * 8;
        uint64_t cnt = (a - lo) / 8;
        if (mem_get(uc, lo, buf, cnt * 8)) break;
        for (uint64_t i = cnt; i > 0; i--) {
            if (!buf[i - 1]) return n;       /* the region's zero-filled start */
            frames[n++] = buf[i - 1] & RET_MASK;
        }
        a = lo;
    }
    return n;
}
