/* KFENCE mode: a sampled guard-page allocator (the kernel's KFENCE, in user space).
 *
 * No per-access hook. A pool of (N+1)*2 pages: pages 0 and 1 are guards, object k lives on
 * page 2k+2 and its right guard is page 2k+3. Page protection goes through Unicorn's
 * virtual-TLB mode: the TLB-fill callback maps a live object page 1:1 and sends guard, free and
 * unused pages to a PROT_NONE "trap twin" of the pool, so a change of protection is a byte in
 * page_ok[] plus that one page's TLB entry forgotten (engine/patches/016; a whole-TLB flush at
 * every sampled allocation and free made the guest refill its working set each time: alloc.c
 * ran at 1.3-1.45x --mode none). A fault in the twin arrives (as a physical address) in
 * emsan_kfence_fault(), which classifies it like kfence_handle_page_fault().
 *
 * The allocator's entry points carry emsan_kfence_entry_cb() behind a gate the engine tests in
 * translated code (engine/patches/017), the kernel's static key: an allocation decrements the
 * sampling countdown and calls only when it reaches 0; a free, realloc or malloc_usable_size
 * calls only when its pointer lies in the pool or the spill arena (is_kfence_address()).
 * Between samples the guest's own allocator runs with no call into emsan. Right after the pool
 * lies a small "spill" arena: a pool object realloc'ed beyond a page (or while the pool is full)
 * moves there, so that libc never sees a pointer it did not hand out. */
#include "runtime.h"
#include <time.h>

#define KF_UNUSED 0
#define KF_ALLOCATED 1
#define KF_FREED 2
#define KF_STACK_HASH_DEPTH 8          /* UNIQUE_ALLOC_STACK_DEPTH */

struct kf_meta {
    uint64_t addr, size;
    uint64_t alloc_ns, free_ns;
    uint64_t unprotected_page;         /* a guard page opened by an OOB report, 0 if none */
    uint32_t alloc_stack, free_stack;
    uint32_t alloc_tid, free_tid;
    uint32_t hash;                     /* allocation-stack hash (skip-covered filter) */
    uint8_t state;
    uint8_t canary_ok;                 /* the page is canary everywhere but [addr, addr + size) */
};

struct emsan_kfence {
    rt_t *rt;
    uint64_t pool, pool_size, trap, span, arena, arena_pages;
    uint32_t nobj, npages;
    uint8_t *page_ok;
    struct kf_meta *meta;
    uint32_t *fifo; uint32_t fifo_head, fifo_len;      /* free slots, least recently freed first */
    uint64_t rng;
    /* sampling gate */
    uint64_t interval, countdown;                      /* by allocation count: the entry hooks' gate
                                                        * decrements it, 0 is a sampling attempt */
    uint64_t insn_interval, code_bytes, next_at;       /* by guest time (code bytes / 4) */
    int flush_pending;
    /* skip-covered: counting Bloom filter over allocation-stack hashes */
    uint32_t *covered; uint32_t covered_mask; uint32_t skip_thresh_pct;
    /* spill arena: page runs */
    uint64_t *arena_size;              /* per arena page: object size + 1 at a run's first page */
    uint32_t *arena_run;               /* per arena page: run length at its first page */
    uint64_t arena_bump;
    struct vec64 arena_free;           /* (page << 24 | npages) */
    emsan_kfence_stats stats;
    uint8_t canary[PAGE_SIZE];
    struct timespec t0;
    struct kf_saved *saved;            /* a persistent loop's checkpoint, or NULL */
};

typedef struct emsan_kfence kf_t;
struct kf_saved;
static void saved_free(struct kf_saved *s);

static uint64_t rnd(kf_t *k)           /* splitmix64 */
{
    uint64_t z = (k->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t now_ns(kf_t *k)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - k->t0.tv_sec) * 1000000000ULL + (uint64_t)t.tv_nsec - (uint64_t)k->t0.tv_nsec;
}

static inline void flush_tlb(kf_t *k)
{
    tlb_flush(k->rt->uc);
    k->flush_pending = 0;
    k->stats.tlb_flushes++;
}

/* The engine's TLB pages can be smaller than emsan's 4 KiB: QEMU's arm targets use 1 KiB
 * (TARGET_PAGE_BITS_MIN 10), each with its own entry. */
#define ENGINE_MIN_PAGE 1024

/* A pool page's protection: page_ok[] is what the TLB fill reads, and the page's entries (if the
 * guest has any) go so that the next access asks again. */
static inline void set_page_ok(kf_t *k, uint64_t page, int ok)
{
    k->page_ok[(page - k->pool) >> PAGE_SHIFT] = (uint8_t)ok;
    for (uint64_t a = page; a < page + PAGE_SIZE; a += ENGINE_MIN_PAGE) tlb_flush_page(k->rt->uc, a);
    k->stats.tlb_flushes++;
}

static inline uint64_t page_addr(kf_t *k, uint32_t idx) { return k->pool + ((uint64_t)idx * 2 + 2) * PAGE_SIZE; }

EXPORT emsan_kfence *emsan_kfence_new(emsan_runtime *rt, uint64_t pool, uint32_t nobj, uint64_t trap, uint64_t arena_size,
                                      uint64_t seed, uint64_t interval, uint64_t insn_interval, uint32_t skip_thresh_pct)
{
    kf_t *k = calloc(1, sizeof *k);
    k->rt = rt;
    k->pool = pool;
    k->nobj = nobj;
    k->npages = (nobj + 1) * 2;
    k->pool_size = (uint64_t)k->npages * PAGE_SIZE;
    k->trap = trap;
    k->arena = pool + k->pool_size;
    k->arena_pages = arena_size >> PAGE_SHIFT;
    k->span = k->pool_size + arena_size;
    k->page_ok = calloc(k->npages, 1);
    k->meta = calloc(nobj, sizeof *k->meta);
    k->fifo = calloc(nobj, sizeof *k->fifo);
    k->rng = seed;
    for (uint32_t i = 0; i < nobj; i++) k->fifo[i] = i;
    for (uint32_t i = nobj; i > 1; i--) {              /* randomized freelist, as kfence_init_pool */
        uint32_t j = (uint32_t)(rnd(k) % i), t = k->fifo[i - 1];
        k->fifo[i - 1] = k->fifo[j]; k->fifo[j] = t;
    }
    k->fifo_len = nobj;
    k->interval = interval ? interval : 1;
    k->countdown = 1 + rnd(k) % k->interval;           /* a random phase per seed */
    k->insn_interval = insn_interval;
    k->next_at = insn_interval ? rnd(k) % insn_interval : 0;
    uint32_t bits = 2;
    while ((1u << bits) < nobj * 4) bits++;            /* 2^(ilog2(N)+2) counters */
    k->covered = calloc(1u << bits, sizeof *k->covered);
    k->covered_mask = (1u << bits) - 1;
    k->skip_thresh_pct = skip_thresh_pct;
    k->arena_size = calloc(k->arena_pages ? k->arena_pages : 1, sizeof *k->arena_size);
    k->arena_run = calloc(k->arena_pages ? k->arena_pages : 1, sizeof *k->arena_run);
    for (uint64_t i = 0; i < PAGE_SIZE; i++) k->canary[i] = (uint8_t)(0xaa ^ (i & 7));
    clock_gettime(CLOCK_MONOTONIC, &k->t0);
    return k;
}

/* Touches nothing of the runtime's, which may be gone already. */
EXPORT void emsan_kfence_destroy(emsan_kfence *k)
{
    free(k->page_ok); free(k->meta); free(k->fifo); free(k->covered); free(k->arena_size); free(k->arena_run);
    free(k->arena_free.v);
    saved_free(k->saved);
    free(k);
}

/* Every allocator entry point but valloc and pvalloc (left to the guest, as before emsan). */
EXPORT void *emsan_kfence_entry(emsan_kfence *k, int fn)
{
    if (call_op(fn) == CALL_NONE || call_op(fn) == CALL_TAG_MEMORY || fn == EMSAN_FN_VALLOC || fn == EMSAN_FN_PVALLOC)
        return NULL;
    return rt_entry(k->rt, k, fn);
}

EXPORT void emsan_kfence_get_stats(emsan_kfence *k, emsan_kfence_stats *out)
{
    *out = k->stats;
    out->guest_time = k->code_bytes >> 2;
    out->errors = k->rt->errors;
}

/* ---- the TLB: live object pages 1:1, everything else in the pool to the trap twin ----------- */

EXPORT _Bool emsan_kfence_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud)
{
    (void)uc; (void)type;
    kf_t *k = ud;
    engine_tlb_entry *e = entry;
    uint64_t off = vaddr - k->pool;
    if (UNLIKELY(off < k->pool_size) && !k->page_ok[off >> PAGE_SHIFT]) e->paddr = k->trap + off;
    else e->paddr = guest_addr(k->rt, vaddr);
    e->perms = ENGINE_PROT_ALL;        /* the physical region's own protection still applies */
    return 1;
}

/* Guest time for --sample-instructions: executed code bytes, a quarter of which approximates
 * instructions (exact on arm64). */
EXPORT void emsan_kfence_block_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address;
    ((kf_t *)ud)->code_bytes += size;
}

/* ---- errors ------------------------------------------------------------------------------------ */

/* A new error, with the object as it is now (the report shows that state). */
static emsan_error *new_error(kf_t *k, int type, uint64_t addr, int is_write, uint64_t pc, uint32_t stack, int idx)
{
    emsan_error *e = error_new(k->rt, type, addr, 0, is_write, pc, stack);
    emsan_kfence_object *o = &e->kfence;
    o->now_ns = now_ns(k);
    o->index = idx;
    if (idx >= 0) {
        struct kf_meta *m = &k->meta[idx];
        o->addr = m->addr; o->size = m->size; o->state = m->state;
        o->alloc_stack = m->alloc_stack; o->free_stack = m->free_stack;
        o->alloc_ns = m->alloc_ns; o->free_ns = m->free_ns;
        o->alloc_tid = m->alloc_tid; o->free_tid = m->free_tid;
    }
    return e;
}

/* A fault in the pool (type: a UC_MEM_*_PROT value; addr: physical, in the trap twin, or
 * virtual). Returns 1 if it was the pool's: the access then proceeds, as the kernel lets it. */
EXPORT int emsan_kfence_fault(emsan_kfence *k, int type, uint64_t addr)
{
    uint64_t off;
    if (addr - k->trap < k->pool_size) off = addr - k->trap;
    else if (addr - k->pool < k->pool_size) off = addr - k->pool;
    else return 0;
    uint64_t vaddr = k->pool + off;
    uint32_t page = (uint32_t)(off >> PAGE_SHIFT);
    if (k->page_ok[page]) return 1;    /* opened by an earlier report; its TLB flush is pending */
    int is_write = type == ENGINE_MEM_WRITE_PROT;
    rt_t *rt = k->rt;
    uint64_t pc = reg(rt, EMSAN_REG_PC);
    int kind, idx = -1;
    if (page & 1) {                    /* a guard page: out of bounds of the closer live neighbour */
        int64_t dist = 0;
        if (page >= 3) {
            int l = (int)(page - 1) / 2 - 1;
            if (k->meta[l].state == KF_ALLOCATED) { idx = l; dist = (int64_t)(vaddr - (k->meta[l].addr + k->meta[l].size)); }
        }
        int r = (int)(page + 1) / 2 - 1;
        if (r >= 0 && (uint32_t)r < k->nobj && k->meta[r].state == KF_ALLOCATED &&
            (idx < 0 || dist > (int64_t)(k->meta[r].addr - vaddr)))
            idx = r;
        kind = idx >= 0 ? EMSAN_ERR_KFENCE_OOB : EMSAN_ERR_KFENCE_INVALID;
        if (idx >= 0) k->meta[idx].unprotected_page = k->pool + ((uint64_t)page << PAGE_SHIFT);
    } else if (page >= 2 && k->meta[page / 2 - 1].state != KF_UNUSED) {
        idx = (int)page / 2 - 1;
        kind = EMSAN_ERR_KFENCE_UAF;
        k->meta[idx].canary_ok = 0;    /* the page opens: its canaries are rewritten next time */
    } else {
        kind = EMSAN_ERR_KFENCE_INVALID;
    }
    new_error(k, kind, vaddr, is_write, pc, stack_here(rt, pc, 0), idx);
    /* Unprotect and let the access proceed. The TLB cannot be flushed in the middle of an
     * access: this access goes to the twin, and the flush happens at the next allocator call. */
    k->page_ok[page] = 1;
    k->flush_pending = 1;
    error_raise(rt);
    return 1;
}

/* ---- the skip-covered filter (alloc_covered_*) ------------------------------------------------ */

static uint32_t stack_hash(kf_t *k, uint32_t handle)
{
    uint64_t frames[KF_STACK_HASH_DEPTH];
    int n = depot_get(k->rt, handle, frames, KF_STACK_HASH_DEPTH);
    uint64_t x = 0xCBF29CE484222325ULL;
    for (int i = 0; i < n; i++) { x ^= frames[i]; x *= 0x100000001B3ULL; x ^= x >> 29; }
    return (uint32_t)(x ^ (x >> 32));
}

static inline uint32_t hash_next(uint32_t h) { return h * 0x61C88647u + 0x9E3779B9u; }   /* hash_32 chain */

static void covered_add(kf_t *k, uint32_t hash, int delta)
{
    k->covered[hash & k->covered_mask] += (uint32_t)delta;
    k->covered[hash_next(hash) & k->covered_mask] += (uint32_t)delta;
}

static int covered_contains(kf_t *k, uint32_t hash)
{
    return k->covered[hash & k->covered_mask] && k->covered[hash_next(hash) & k->covered_mask];
}

/* ---- the pool ---------------------------------------------------------------------------------- */

static uint64_t kf_place(kf_t *k, uint64_t size, uint64_t align, int zero, uint32_t stack, uint32_t hash)
{
    if (!k->fifo_len) { k->stats.skipped_capacity++; return 0; }
    uint32_t idx = k->fifo[k->fifo_head];
    k->fifo_head = (k->fifo_head + 1) % k->nobj;
    k->fifo_len--;
    uint64_t page = page_addr(k, idx);
    uint64_t addr = page;
    if (rnd(k) & 1) addr = (page + PAGE_SIZE - size) & ~(align - 1);     /* right edge, aligned */
    struct kf_meta *m = &k->meta[idx];
    /* Canaries around the object: where the page still holds them (checked at the last free),
     * only the last object's bytes need them again, and the new object's get them too (its
     * contents before the guest writes, as with a whole page of canary). */
    if (m->canary_ok) {
        mem_put(k->rt->uc, m->addr, k->canary + (m->addr - page), m->size);
        mem_put(k->rt->uc, addr, k->canary + (addr - page), size);
    } else {
        mem_put(k->rt->uc, page, k->canary, PAGE_SIZE);
    }
    m->canary_ok = 0;
    m->addr = addr; m->size = size; m->state = KF_ALLOCATED;
    m->alloc_stack = stack; m->free_stack = 0; m->alloc_ns = now_ns(k); m->free_ns = 0;
    m->alloc_tid = k->rt->tid; m->free_tid = 0;
    m->hash = hash;
    covered_add(k, hash, 1);
    if (zero && size) {
        static const uint8_t zeros[PAGE_SIZE];
        mem_put(k->rt->uc, addr, zeros, size);
    }
    set_page_ok(k, page, 1);
    k->stats.allocated++;
    k->stats.total_allocs++;
    return addr;
}

static inline int gate_open(kf_t *k)
{
    if (k->insn_interval) return (k->code_bytes >> 2) >= k->next_at;
    return !k->countdown;
}

static inline void gate_close(kf_t *k)
{
    if (k->insn_interval) k->next_at = (k->code_bytes >> 2) + k->insn_interval;
    else k->countdown = k->interval;
}

/* The sampling decision for an allocation of `size` (__kfence_alloc). */
static uint64_t kf_maybe_alloc(kf_t *k, uint64_t size, uint64_t align, int zero)
{
    if (!gate_open(k)) return 0;
    if (!size || size > PAGE_SIZE || align > PAGE_SIZE) { k->stats.skipped_incompat++; return 0; }
    gate_close(k);
    uint32_t stack = stack_here(k->rt, 0, 1);
    uint32_t hash = stack_hash(k, stack);
    if (k->skip_thresh_pct && k->stats.allocated * 100 > (uint64_t)k->skip_thresh_pct * k->nobj &&
        covered_contains(k, hash)) {
        k->stats.skipped_covered++;
        return 0;
    }
    return kf_place(k, size, align < 16 ? 16 : align, zero, stack, hash);
}

/* A bad free is reported at the allocator's caller. */
static emsan_error *report_free_error(kf_t *k, int type, uint64_t ptr, int idx)
{
    uint32_t stack = stack_here(k->rt, 0, 1);
    uint64_t frames[1];
    uint64_t caller = depot_get(k->rt, stack, frames, 1) ? frames[0] : 0;
    return new_error(k, type, ptr, 0, caller, stack, idx);
}

/* kfence_guarded_free(): validate, check the canaries, protect, append to the freelist. */
static void kf_free(kf_t *k, uint64_t ptr)
{
    uint64_t off = ptr - k->pool;
    int64_t idx = (int64_t)(off / (2 * PAGE_SIZE)) - 1;
    struct kf_meta *m = idx >= 0 && idx < k->nobj ? &k->meta[idx] : NULL;
    if (!m || m->state != KF_ALLOCATED || m->addr != ptr) {
        report_free_error(k, EMSAN_ERR_KFENCE_INVALID_FREE, ptr, m && m->state != KF_UNUSED ? (int)idx : -1);
        error_raise(k->rt);
        return;
    }
    m->free_stack = stack_here(k->rt, 0, 1);
    m->free_tid = k->rt->tid;
    m->free_ns = now_ns(k);
    m->state = KF_FREED;
    uint64_t page = ptr & ~(PAGE_SIZE - 1);
    uint8_t copy[PAGE_SIZE];
    const uint8_t *buf = mem_view(k->rt->uc, page, copy, PAGE_SIZE);
    if (!buf) {                        /* not all mapped: cannot be, the pool is emsan's */
        memset(copy, 0, PAGE_SIZE);
        buf = copy;
    }
    uint64_t lo = ptr - page, hi = lo + m->size, bad = PAGE_SIZE;
    if (memcmp(buf, k->canary, lo))
        for (uint64_t i = 0; i < lo; i++) if (buf[i] != k->canary[i]) { bad = i; break; }
    if (bad == PAGE_SIZE && memcmp(buf + hi, k->canary + hi, PAGE_SIZE - hi))
        for (uint64_t i = hi; i < PAGE_SIZE; i++) if (buf[i] != k->canary[i]) { bad = i; break; }
    if (bad != PAGE_SIZE) {
        emsan_kfence_object *o = &report_free_error(k, EMSAN_ERR_KFENCE_CORRUPTION, page + bad, (int)idx)->kfence;
        /* print_diff_canary(): up to 16 bytes, not into the object */
        uint64_t end = bad < lo ? lo : PAGE_SIZE;
        if (end > bad + 16) end = bad + 16;
        o->nbytes = (int)(end - bad);
        for (uint64_t i = bad; i < end; i++) {
            o->bytes[i - bad] = buf[i];
            o->intact[i - bad] = buf[i] == k->canary[i];
        }
    }
    m->canary_ok = bad == PAGE_SIZE;
    set_page_ok(k, page, 0);
    if (m->unprotected_page) {         /* a guard page an OOB report opened: zero and close */
        static const uint8_t zeros[PAGE_SIZE];
        mem_put(k->rt->uc, m->unprotected_page, zeros, PAGE_SIZE);
        set_page_ok(k, m->unprotected_page, 0);
        m->unprotected_page = 0;
    }
    covered_add(k, m->hash, -1);
    k->fifo[(k->fifo_head + k->fifo_len) % k->nobj] = (uint32_t)idx;
    k->fifo_len++;
    k->stats.allocated--;
    k->stats.total_frees++;
    if (bad != PAGE_SIZE) error_raise(k->rt);
}

/* ---- the spill arena ------------------------------------------------------------------------- */

static uint64_t arena_alloc(kf_t *k, uint64_t size)
{
    uint64_t n = (size + PAGE_SIZE - 1) >> PAGE_SHIFT;
    if (!n) n = 1;
    uint64_t page = take_run(&k->arena_free, n);
    if (page == UINT64_MAX) {
        if (n >= (1 << 24) || k->arena_bump + n > k->arena_pages) return 0;
        page = k->arena_bump;
        k->arena_bump += n;
    }
    k->arena_size[page] = size + 1;
    k->arena_run[page] = (uint32_t)n;
    k->stats.spilled++;
    return k->arena + (page << PAGE_SHIFT);
}

/* Size of the arena object starting at ptr, or -1. */
static int64_t arena_object(kf_t *k, uint64_t ptr)
{
    uint64_t off = ptr - k->arena;
    if (off >= (k->arena_pages << PAGE_SHIFT) || (off & (PAGE_SIZE - 1)) || !k->arena_size[off >> PAGE_SHIFT]) return -1;
    return (int64_t)(k->arena_size[off >> PAGE_SHIFT] - 1);
}

static void arena_free(kf_t *k, uint64_t ptr)
{
    uint64_t page = (ptr - k->arena) >> PAGE_SHIFT;
    vec_push(&k->arena_free, (page << 24) | k->arena_run[page]);
    k->arena_size[page] = 0;
    k->arena_run[page] = 0;
}

/* The live pool object at exactly ptr, or -1. */
static int64_t pool_object(kf_t *k, uint64_t ptr)
{
    int64_t idx = (int64_t)((ptr - k->pool) / (2 * PAGE_SIZE)) - 1;
    return idx >= 0 && idx < k->nobj && k->meta[idx].state == KF_ALLOCATED && k->meta[idx].addr == ptr ? idx : -1;
}

/* free() of one of emsan's pointers (pool or arena). */
static void own_free(kf_t *k, uint64_t ptr)
{
    if (ptr - k->pool < k->pool_size) { kf_free(k, ptr); return; }
    if (arena_object(k, ptr) >= 0) { arena_free(k, ptr); return; }
    report_free_error(k, EMSAN_ERR_KFENCE_INVALID_FREE, ptr, -1);
    error_raise(k->rt);
}

/* Size of one of emsan's live objects at exactly ptr, or -1 (after reporting an invalid free). */
static int64_t own_size(kf_t *k, uint64_t ptr)
{
    if (ptr - k->pool < k->pool_size) {
        int64_t idx = pool_object(k, ptr);
        if (idx >= 0) return (int64_t)k->meta[idx].size;
        kf_free(k, ptr);               /* reports the invalid (or double) free */
        return -1;
    }
    int64_t n = arena_object(k, ptr);
    if (n < 0) { report_free_error(k, EMSAN_ERR_KFENCE_INVALID_FREE, ptr, -1); error_raise(k->rt); }
    return n;
}

static uint64_t own_realloc(kf_t *k, uint64_t ptr, uint64_t size)
{
    int64_t old = own_size(k, ptr);
    if (old < 0) return 0;
    if (!size) { own_free(k, ptr); return 0; }
    uint64_t p = 0;
    if (size <= PAGE_SIZE) {           /* stays sampled: a fresh pool object, as krealloc would */
        uint32_t stack = stack_here(k->rt, 0, 1);
        p = kf_place(k, size, 16, 0, stack, stack_hash(k, stack));
    }
    if (!p) p = arena_alloc(k, size);
    if (!p) return 0;                  /* ENOMEM: the old object stays */
    guest_copy(k->rt, p, ptr, (uint64_t)old < size ? (uint64_t)old : size);
    own_free(k, ptr);
    return p;
}

/* The gate of the hook hh on an allocator entry point of function fn (engine/patches/017): the
 * engine calls emsan_kfence_entry_cb() only when it passes. An allocation counts down (not under
 * --sample-instructions: guest time is read in the callback); a pointer argument must be one of
 * emsan's (the pool and the spill arena, in one span). */
EXPORT int emsan_kfence_gate(emsan_kfence *k, int fn, size_t hh)
{
    rt_t *rt = k->rt;
    int op = call_op(fn);
    if (op == CALL_ALLOC)
        return k->insn_interval ? 0 : hook_gate(rt->uc, hh, &k->countdown, -1, 0, 1);
    uint64_t *arg0 = reg_ptr(rt->uc, rt->regs[EMSAN_REG_ARG0], 0);
    if (!arg0 || (op != CALL_FREE && op != CALL_REALLOC && op != CALL_USABLE_SIZE)) return 0;
    return hook_gate(rt->uc, hh, arg0, 0, k->pool, k->span);
}

/* Unicorn UC_HOOK_CODE callback on the first instruction of each allocator entry point:
 * unsampled allocations and pointers that are not emsan's go on to the guest's allocator. */
EXPORT void emsan_kfence_entry_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address; (void)size;
    struct entry *en = ud;
    kf_t *k = en->owner;
    rt_t *rt = k->rt;
    if (UNLIKELY(k->flush_pending)) flush_tlb(k);
    k->stats.calls++;
    struct alloc_call c;
    decode_alloc_call(rt, en->fn, &c);
    if (c.op == CALL_ALLOC) {
        uint64_t r = c.bad ? 0 : kf_maybe_alloc(k, c.size, c.align, c.zero);
        if (!k->insn_interval && !k->countdown) k->countdown = 1;     /* not taken: the next one tries */
        if (!r) return;                /* not sampled: the guest's allocator runs */
        if (c.out) {                   /* posix_memalign */
            mem_put(rt->uc, c.out, &r, 8);
            r = 0;
        }
        return_to_caller(rt, r);
        return;
    }
    if (LIKELY(c.ptr - k->pool >= k->span)) return;          /* is_kfence_address(): not ours */
    switch (c.op) {
    case CALL_FREE:
        own_free(k, c.ptr);
        return_to_caller(rt, 0);
        break;
    case CALL_REALLOC:
        return_to_caller(rt, c.bad ? 0 : own_realloc(k, c.ptr, c.size));
        break;
    case CALL_USABLE_SIZE: {                                   /* ksize() of a KFENCE object: exact */
        int64_t n = c.ptr - k->pool < k->pool_size ? -1 : arena_object(k, c.ptr), idx = pool_object(k, c.ptr);
        if (idx >= 0) n = (int64_t)k->meta[idx].size;
        return_to_caller(rt, n < 0 ? 0 : (uint64_t)n);
        break;
    }
    default:
        break;
    }
}

/* A range touched on the guest's behalf (a system call's buffer): a protected pool page in it
 * is reported as the access the kernel would have faulted on. */
EXPORT int emsan_kfence_check_range(emsan_kfence *k, uint64_t addr, uint64_t size, int is_write)
{
    if (!size) return 0;
    uint64_t lo = addr, hi = addr + size;
    if (hi < lo || hi <= k->pool || lo >= k->pool + k->pool_size) return 0;
    if (lo < k->pool) lo = k->pool;
    for (uint64_t a = lo; a < hi && a < k->pool + k->pool_size; a = (a | (PAGE_SIZE - 1)) + 1)
        if (!k->page_ok[(a - k->pool) >> PAGE_SHIFT])
            return emsan_kfence_fault(k, is_write ? ENGINE_MEM_WRITE_PROT : ENGINE_MEM_READ_PROT, a);
    return 0;
}

/* ---- a persistent fuzzing loop: back to a checkpoint after each input ------------------------ */

/* What an input may change: the objects, the freelist, the protections, the skip-covered
 * filter, the spill arena (up to its bump) and the counters. The objects' pages are guest
 * memory, which the loop restores itself; the sampling gate runs on (reseed() picks a new
 * phase per input). */
struct kf_saved {
    struct kf_meta *meta;
    uint32_t *fifo, fifo_head, fifo_len;
    uint8_t *page_ok;
    uint32_t *covered;
    uint64_t arena_bump;
    uint64_t *arena_size;
    uint32_t *arena_run;
    struct vec64 arena_free;
    emsan_kfence_stats stats;
};

static void *dup_bytes(const void *p, size_t n)
{
    void *q = malloc(n ? n : 1);
    memcpy(q, p, n);
    return q;
}

static void saved_free(struct kf_saved *s)
{
    if (!s) return;
    free(s->meta); free(s->fifo); free(s->page_ok); free(s->covered); free(s->arena_size); free(s->arena_run);
    free(s->arena_free.v);
    free(s);
}

EXPORT void emsan_kfence_checkpoint(emsan_kfence *k)
{
    saved_free(k->saved);
    struct kf_saved *s = calloc(1, sizeof *s);
    s->meta = dup_bytes(k->meta, k->nobj * sizeof *k->meta);
    s->fifo = dup_bytes(k->fifo, k->nobj * sizeof *k->fifo);
    s->fifo_head = k->fifo_head;
    s->fifo_len = k->fifo_len;
    s->page_ok = dup_bytes(k->page_ok, k->npages);
    s->covered = dup_bytes(k->covered, (k->covered_mask + 1) * sizeof *k->covered);
    s->arena_bump = k->arena_bump;
    s->arena_size = dup_bytes(k->arena_size, k->arena_bump * sizeof *k->arena_size);
    s->arena_run = dup_bytes(k->arena_run, k->arena_bump * sizeof *k->arena_run);
    s->arena_free.v = dup_bytes(k->arena_free.v, k->arena_free.n * sizeof *k->arena_free.v);
    s->arena_free.n = s->arena_free.cap = k->arena_free.n;
    s->stats = k->stats;
    k->saved = s;
}

EXPORT void emsan_kfence_rollback(emsan_kfence *k)
{
    struct kf_saved *s = k->saved;
    if (!s) return;
    memcpy(k->meta, s->meta, k->nobj * sizeof *k->meta);
    for (uint32_t i = 0; i < k->nobj; i++) k->meta[i].canary_ok = 0;     /* the pages are the loop's */
    memcpy(k->fifo, s->fifo, k->nobj * sizeof *k->fifo);
    k->fifo_head = s->fifo_head;
    k->fifo_len = s->fifo_len;
    memcpy(k->page_ok, s->page_ok, k->npages);
    memcpy(k->covered, s->covered, (k->covered_mask + 1) * sizeof *k->covered);
    if (k->arena_bump > s->arena_bump) {
        memset(k->arena_size + s->arena_bump, 0, (k->arena_bump - s->arena_bump) * sizeof *k->arena_size);
        memset(k->arena_run + s->arena_bump, 0, (k->arena_bump - s->arena_bump) * sizeof *k->arena_run);
    }
    memcpy(k->arena_size, s->arena_size, s->arena_bump * sizeof *k->arena_size);
    memcpy(k->arena_run, s->arena_run, s->arena_bump * sizeof *k->arena_run);
    k->arena_bump = s->arena_bump;
    k->arena_free.n = 0;
    for (size_t i = 0; i < s->arena_free.n; i++) vec_push(&k->arena_free, s->arena_free.v[i]);
    uint64_t flushes = k->stats.tlb_flushes;
    k->stats = s->stats;
    k->stats.tlb_flushes = flushes;
    flush_tlb(k);
}

/* A new sampling stream: which allocation (or instant) is sampled first, and the placement of
 * objects in their pages. */
EXPORT void emsan_kfence_reseed(emsan_kfence *k, uint64_t seed)
{
    k->rng = seed;
    k->countdown = 1 + rnd(k) % k->interval;
    if (k->insn_interval) k->next_at = (k->code_bytes >> 2) + rnd(k) % k->insn_interval;
}
