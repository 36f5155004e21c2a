/* A persistent fuzzing loop runs the target again and again from one saved state: the guest's
 * registers and memory go back to it after every input (a Unicorn snapshot), and so must the
 * allocator's own state. Otherwise an object allocated before the loop and freed by one input
 * stays freed (quarantined, poisoned) for the next, which holds the pointer again after the
 * guest's memory went back: a false use-after-free or double-free; and the objects an input
 * left allocated would never be freed.
 *
 * A checkpoint saves the allocator's bookkeeping once. From then on every object that changes
 * state is journalled (touch(), heap.c), and a rollback puts back just those: their records
 * and the state of their granules (shadow bytes or memory tags); slabs made since are dropped
 * and their pages become unused heap again; free lists, page owners, the quarantine and the
 * counters are copied back (small next to the objects), and the mode puts back its own (the
 * tag modes' stack ring). Its cost grows with what the input changed, not with the heap. */
#include "kasan.h"

struct checkpoint {
    uint64_t bump;
    size_t nslabs;
    struct obj **objs;                 /* per slab then: a copy of its object records */
    uint32_t *page_slab;               /* [0, bump) */
    struct vec64 freelist[NCLASSES], free_runs;
    uint64_t *q; size_t q_len; uint64_t q_bytes;   /* the quarantine, oldest first */
    emsan_kasan_stats stats;
    uint8_t *state;                    /* per granule of [base, base + bump pages) */
    struct vec64 touched;              /* handles changed since */
};

static void vec_copy(struct vec64 *dst, const struct vec64 *src)
{
    if (dst->cap < src->n) {
        dst->cap = src->n;
        dst->v = realloc(dst->v, dst->cap * sizeof *dst->v);
    }
    if (src->n) memcpy(dst->v, src->v, src->n * sizeof *src->v);
    dst->n = src->n;
}

void checkpoint_touch(kasan_t *k, uint64_t handle) { vec_push(&k->cp->touched, handle); }

void checkpoint_destroy(kasan_t *k)
{
    struct checkpoint *cp = k->cp;
    if (!cp) return;
    for (size_t i = 0; i < cp->nslabs; i++) free(cp->objs[i]);
    for (int c = 0; c < NCLASSES; c++) free(cp->freelist[c].v);
    free(cp->objs); free(cp->page_slab); free(cp->free_runs.v); free(cp->q); free(cp->state);
    free(cp->touched.v);
    free(cp);
    k->cp = NULL;
}

/* Save the state to roll back to (again: the current state replaces the saved one). */
EXPORT void emsan_kasan_checkpoint(emsan_kasan *k)
{
    checkpoint_destroy(k);
    struct checkpoint *cp = calloc(1, sizeof *cp);
    cp->bump = k->bump;
    cp->nslabs = k->nslabs;
    cp->objs = calloc(k->nslabs ? k->nslabs : 1, sizeof *cp->objs);
    for (size_t i = 0; i < k->nslabs; i++) {
        size_t bytes = k->slabs[i].nobj * sizeof(struct obj);
        cp->objs[i] = malloc(bytes ? bytes : 1);
        memcpy(cp->objs[i], k->slabs[i].objs, bytes);
    }
    cp->page_slab = malloc(k->bump * sizeof *cp->page_slab);
    memcpy(cp->page_slab, k->page_slab, k->bump * sizeof *cp->page_slab);
    for (int c = 0; c < NCLASSES; c++) vec_copy(&cp->freelist[c], &k->freelist[c]);
    vec_copy(&cp->free_runs, &k->free_runs);
    cp->q_len = k->q_len;
    cp->q_bytes = k->q_bytes;
    cp->q = malloc((k->q_len ? k->q_len : 1) * sizeof *cp->q);
    for (size_t i = 0; i < k->q_len; i++) cp->q[i] = k->q[(k->q_head + i) % k->q_cap];
    cp->stats = k->stats;
    unsigned g = k->ops->granule;
    uint64_t granules = (k->bump << PAGE_SHIFT) / g;
    cp->state = malloc(granules ? granules : 1);
    for (uint64_t i = 0; i < granules; i++) cp->state[i] = k->ops->state_at(k, k->base + i * g);
    if (k->ops->checkpoint) k->ops->checkpoint(k, 0);
    k->cp = cp;
}

/* The granules of [addr, end) as they were at the checkpoint; beyond its heap, unused heap. */
static void restore_range(kasan_t *k, uint64_t addr, uint64_t end)
{
    const struct checkpoint *cp = k->cp;
    unsigned g = k->ops->granule;
    uint64_t saved_end = k->base + (cp->bump << PAGE_SHIFT);
    if (end > saved_end) {
        uint64_t lo = addr > saved_end ? addr : saved_end;
        k->ops->poison(k, lo, end - lo, KASAN_SLAB_REDZONE);
        end = lo;
    }
    /* runs of granules that differ and go back to one value: one set_state each */
    uint64_t run = 0, run_len = 0;
    uint8_t run_v = 0;
    for (uint64_t a = addr; a < end; a += g) {
        uint8_t want = cp->state[(a - k->base) / g];
        int differs = k->ops->state_at(k, a) != want;
        if (run_len && (!differs || want != run_v || a != run + run_len)) {
            k->ops->set_state(k, run, run_len, run_v);
            run_len = 0;
        }
        if (differs) {
            if (!run_len) { run = a; run_v = want; }
            run_len += g;
        }
    }
    if (run_len) k->ops->set_state(k, run, run_len, run_v);
}

static void restore_slab_pages(kasan_t *k, const struct slab *s)
{
    restore_range(k, s->start, s->start + ((uint64_t)s->npages << PAGE_SHIFT));
}

/* Put the allocator back as it was at the checkpoint (which stays, for the next rollback). */
EXPORT void emsan_kasan_rollback(emsan_kasan *k)
{
    struct checkpoint *cp = k->cp;
    if (!cp) return;
    /* slabs made since: dropped, their pages unused (or as they were, if the checkpoint's) */
    for (size_t i = cp->nslabs; i < k->nslabs; i++) {
        restore_slab_pages(k, &k->slabs[i]);
        free(k->slabs[i].objs);
    }
    k->nslabs = cp->nslabs;
    /* objects that changed: their records and their granules */
    for (size_t i = 0; i < cp->touched.n; i++) {
        uint64_t h = cp->touched.v[i];
        size_t sid = h >> 24;
        if (sid >= cp->nslabs) continue;
        struct slab *s = &k->slabs[sid];
        s->objs[h & 0xFFFFFF] = cp->objs[sid][h & 0xFFFFFF];
        if (s->cls == LARGE_CLASS) {
            restore_slab_pages(k, s);
        } else {
            uint64_t a = obj_addr(k, h);
            restore_range(k, a, a + s->slot);
        }
    }
    cp->touched.n = 0;
    memcpy(k->page_slab, cp->page_slab, cp->bump * sizeof *k->page_slab);
    if (k->bump > cp->bump) memset(k->page_slab + cp->bump, 0, (k->bump - cp->bump) * sizeof *k->page_slab);
    k->bump = cp->bump;
    for (int c = 0; c < NCLASSES; c++) vec_copy(&k->freelist[c], &cp->freelist[c]);
    vec_copy(&k->free_runs, &cp->free_runs);
    if (k->q_cap < cp->q_len) {
        free(k->q);
        k->q_cap = cp->q_len;
        k->q = malloc(k->q_cap * sizeof *k->q);
    }
    if (cp->q_len) memcpy(k->q, cp->q, cp->q_len * sizeof *k->q);
    k->q_head = 0;
    k->q_len = cp->q_len;
    k->q_bytes = cp->q_bytes;
    k->stats = cp->stats;
    if (k->ops->checkpoint) k->ops->checkpoint(k, 1);
    mmio_rollback(k);
}

EXPORT void emsan_kasan_reseed(emsan_kasan *k, uint64_t seed)
{
    if (k->ops->reseed) k->ops->reseed(k, seed);
}
