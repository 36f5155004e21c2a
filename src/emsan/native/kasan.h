/* KASAN: emsan's allocator and what checks accesses to its objects. The allocator (heap.c,
 * quarantine.c), the string interceptors (intercept.c) and everything a report asks
 * (kasan.c) are the same in every mode; what a mode changes sits behind struct kasan_ops, as
 * the kernel's generic and tag-based KASAN sit behind one header: generic.c (the shadow,
 * shadow.c, and its checks: a memory hook or the MMIO view, mmio.c) and tags.c (memory tags
 * per 16-byte granule, a stack ring; mte.c for hw-tags). */
#ifndef EMSAN_KASAN_H
#define EMSAN_KASAN_H
#include "runtime.h"

#define GRANULE 8                       /* generic mode: bytes per shadow byte */

/* The kernel's generic KASAN shadow codes. In tag modes every poison value means the
 * invalid tag, as the kernel defines them there. */
#define KASAN_PAGE_FREE 0xFF
#define KASAN_PAGE_REDZONE 0xFE
#define KASAN_SLAB_REDZONE 0xFC
#define KASAN_SLAB_FREE 0xFB
#define KASAN_VMALLOC_INVALID 0xF8

/* Shadow geometry (shadow.c): 4 KiB of shadow per 32 KiB chunk of memory, for addresses
 * below 2^44, found through a two-level directory of pool page numbers. */
#define SHADOW_VA_LIMIT (1ULL << 44)
#define SHADOW_CHUNK_SHIFT (PAGE_SHIFT + 3)
#define SHADOW_CHUNK (1ULL << SHADOW_CHUNK_SHIFT)
#define SHADOW_LEAF_SHIFT 15
#define SHADOW_LEAF_SIZE (1ULL << SHADOW_LEAF_SHIFT)
#define SHADOW_DIR_SIZE ((SHADOW_VA_LIMIT >> SHADOW_CHUNK_SHIFT) >> SHADOW_LEAF_SHIFT)
#define SHADOW_POOL_PAGES (1ULL << 20)          /* 4 GiB of host address space, resident on use */
#define SHADOW_POOL_BYTES (SHADOW_POOL_PAGES << PAGE_SHIFT)
#define SHADOW_RELEASE_BATCH 64
/* Shared pool pages; 0 in the directory means "not decided yet". */
#define SHADOW_ZERO 1       /* all accessible */
#define SHADOW_NONE 2       /* emsan's heap with no object there yet (slab redzone) */
#define SHADOW_FREED 3      /* a freed large object */
#define SHADOW_BLACK 4      /* never to be touched: holes in the mmap area */
#define SHADOW_FIRST_REAL 8

/* Tag modes. */
#define TAG_GRANULE 16
#define TAG_INVALID 0xFE                /* free memory, slab space no object owns */
#define TAG_KERNEL 0xFF                 /* the match-all pointer tag */

/* One object slot. */
struct obj {
    uint64_t size;          /* requested size */
    uint32_t alloc_stack, free_stack;
    uint8_t state, kind;
    uint8_t leak;           /* the leak scanner's flags (kmemleak.c), 0 from allocation on */
    uint8_t align_log;      /* aligned operator new: log2 of the alignment asked for, else 0 */
    uint32_t seq;           /* allocation number (its order; kmemleak.c's time and "before main") */
    uint32_t alloc_tid, free_tid;   /* the threads that allocated and freed it (the kernel's track pid) */
};

/* A slab: pages holding objects of one size class, or one large object. */
struct slab {
    uint64_t start;         /* first byte of the slab (its leading redzone) */
    uint64_t first;         /* first object */
    uint32_t npages;
    uint32_t slot;          /* distance between objects */
    uint32_t nobj;
    int cls;                /* index in size_classes, or -1 for a large object */
    struct obj *objs;
};

#define NCLASSES 14
#define LARGE_CLASS (-1)

/* The directory last: 128 KiB, mostly untouched; the fields before it share a page. */
struct shadow_map {
    uint8_t *pool;                     /* SHADOW_POOL_PAGES host pages; the guest may map them */
    uint32_t next;                     /* next never-used pool page */
    uint32_t limit;                    /* pages of the pool emsan may use (--shadow-limit) */
    struct vec64 spare;                /* released pool pages */
    int share;                         /* 0: every written chunk gets a private page (full shadow) */
    int exposed;                       /* mapped into the guest (gshadow.c) */
    int remapped;                      /* a chunk changed pages since the guest's TLB was flushed */
    int must_flush;                    /* ... and its old page was recycled: flush before the guest runs */
    uint64_t vm_lo, vm_size;           /* the mmap area, shadowed from what is mapped there */
    uint8_t *vm_pages;                 /* one bit per page of the area: mapped */
    struct vec64 release;              /* chunks that may no longer be used by any mapping */
    uint32_t *dir[SHADOW_DIR_SIZE];    /* chunk -> pool page, leaves allocated on use */
};

typedef struct emsan_kasan kasan_t;

/* A C library call that may write past its buffer, by how much only its result tells (fgets,
 * fread: libc.c): judged when it returns (a code hook at its return address) or when glibc's
 * _FORTIFY_SOURCE check fails inside it; its own bad writes into the buffer meanwhile are its
 * (reported once, at the caller). */
#define MAX_PENDING 8
#define MAX_DESTS 16
#define DEST_FIXED 1                   /* max bytes */
#define DEST_STRING 2                  /* a string and its NUL, at most max bytes (~0: unbounded) */
#define DEST_COUNT 3                   /* scanf's %n: stored, not counted in its result */
struct dest { uint64_t ptr, max; uint8_t kind, elem; };
struct pending {
    int fn;
    uint64_t entry, sp, ret;           /* where it was entered, its stack pointer and return */
    uint64_t size;                     /* fread's item size; a checked call's object size */
    uint32_t stack;                    /* its entry's (a report's) */
    int reported;                      /* reported at its entry: the range is quiet for reads too,
                                        * nothing is judged at its return */
    int ndests;
    struct dest d[MAX_DESTS];          /* what it may write */
};
/* Allocated on first use: nothing of it sits among the fields every access reads. */
struct libc_calls {
    struct pending pend[MAX_PENDING];  /* running, innermost last */
    int npend;
    struct vec64 ret_hooks;            /* return addresses with a hook of libc.c's */
};

/* What a KASAN mode changes. Poison values are the generic shadow codes. */
struct kasan_ops {
    unsigned granule;                  /* bytes one shadow byte or memory tag describes */
    int quarantine;                    /* freed objects wait in the quarantine before reuse */
    int (*init)(kasan_t *k, uint64_t seed);
    void (*destroy)(kasan_t *k);
    /* a slab object's redzone (the kernel's optimal_redzone(); none in tag modes) */
    uint32_t (*redzone)(uint32_t object_size);
    /* [addr, addr+len) (granule aligned) becomes inaccessible */
    void (*poison)(kasan_t *k, uint64_t addr, uint64_t len, uint8_t value);
    /* [addr, addr+size) becomes accessible and the rest up to poison_to is poisoned with rz;
     * returns the pointer the guest gets (tag modes: tagged) */
    uint64_t (*unpoison)(kasan_t *k, uint64_t addr, uint64_t size, uint64_t poison_to, uint8_t rz);
    /* is the object at ptr live for this pointer (the kernel's kasan_byte_accessible on free)? */
    int (*accessible)(kasan_t *k, const struct obj *o, uint64_t ptr);
    /* does any byte of [addr, addr+size) fail the mode's check (size > 0, no wrap)? */
    int (*range_bad)(kasan_t *k, uint64_t addr, uint64_t size);
    /* allocation and free records kept beside the object's (tag modes: the stack ring), or NULL */
    void (*save_track)(kasan_t *k, uint64_t ptr, uint64_t size, uint64_t cache_size, uint32_t stack, int is_free);
    /* complete a report's object info (tag modes: from the stack ring), or NULL */
    void (*describe)(kasan_t *k, uint64_t addr, uint64_t size, emsan_obj_info *out);
    /* the guest tags memory itself (__hwasan_tag_memory), or NULL */
    void (*tag_memory)(kasan_t *k, uint64_t addr, uint8_t tag, uint64_t size);
    /* the per-access check of a memory hook (user data: the kasan) */
    void (*access_cb)(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud);
    /* a heap granule's state (generic: its shadow byte; tag modes: its memory tag), and setting
     * [addr, addr+len) (granule aligned) back to one exactly: a rollback's (checkpoint.c) */
    uint8_t (*state_at)(kasan_t *k, uint64_t addr);
    void (*set_state)(kasan_t *k, uint64_t addr, uint64_t len, uint8_t v);
    /* save (restore = 0) or put back (1) what else the mode keeps per allocation, or NULL */
    void (*checkpoint)(kasan_t *k, int restore);
    /* a new random stream (tag modes' tags), or NULL */
    void (*reseed)(kasan_t *k, uint64_t seed);
};

extern const struct kasan_ops kasan_generic_ops, kasan_sw_tags_ops, kasan_hw_tags_ops;

struct emsan_kasan {
    rt_t *rt;
    const struct kasan_ops *ops;
    uint64_t base, size, npages;
    uint8_t *host;                     /* the heap's memory, mapped at base in the guest */
    struct emsan_leaks *leaks;          /* the leak scanner, when it runs (kmemleak.c) */
    uint64_t bump;                     /* next never-used page index */
    uint32_t *page_slab;               /* per heap page: slab id + 1, 0 = none */
    struct slab *slabs; size_t nslabs, slabs_cap;
    struct vec64 freelist[NCLASSES];   /* handles (slab << 24 | index) ready for reuse */
    struct vec64 free_runs;            /* large-object page runs ready for reuse: (page << 24 | npages) */
    /* quarantine: FIFO of handles, bounded in bytes */
    uint64_t *q; size_t q_head, q_len, q_cap; uint64_t q_bytes, q_limit;
    struct vec64 tolerant;             /* pairs lo, hi: code that may read ahead (see kasan.c) */
    /* allocation errors (heap.c): reported, or only left to the C library's own behaviour */
    int report_alloc_errors;
    uint64_t budget;                   /* live bytes the guest's limits allow (RLIMIT_AS, _DATA) */
    uint64_t refusal_sp, refusal_ret;  /* the refused call whose nested calls are not reported again */
    struct mmio_state *mm;             /* generic mode with --checks mmio (mmio.c) */
    struct inline_state *il;           /* --checks inline (inline.c) */
    struct tag_state *tags;            /* tag modes (tags.c) */
    struct checkpoint *cp;             /* a persistent loop's saved state (checkpoint.c), or NULL */
    struct libc_calls *calls;          /* C library calls judged at their return (libc.c), or NULL */
    /* compiler-assisted mode: memintrinsics with good ranges run the guest's own routine (intercept.c) */
    int guest_routines;
    uint64_t routines_run;
    emsan_kasan_stats stats;
    struct shadow_map sm;              /* every mode: the mmap area's shadow (last: see above) */
};

/* kasan.c */
/* Check [addr, addr+size) for a function entitled to touch exactly that range (the kernel's
 * check_range): one report for the whole range; nonzero if it was bad. */
int check_range(kasan_t *k, uint64_t addr, uint64_t size, int is_write, int fn);
/* ... for a call judged after its entry (libc.c): reported with the pc and stack of its entry. */
int check_range_from(kasan_t *k, uint64_t addr, uint64_t size, int is_write, int fn, uint64_t pc, uint32_t stack);
int in_tolerant_range(kasan_t *k, uint64_t pc);
/* A load of [ptr, ptr+size) by string code that is the read-ahead of a terminated string. */
int read_ahead(kasan_t *k, uint64_t pc, uint64_t ptr, uint64_t size);
#define READAHEAD 64            /* bytes a string routine's last loads may reach past its NUL */

/* heap.c */
void kasan_call(kasan_t *k, int fn);
uint64_t heap_malloc(kasan_t *k, uint64_t size);
int64_t find_object(kasan_t *k, uint64_t addr);
void release_object(kasan_t *k, uint64_t handle);
static inline struct slab *slab_of(kasan_t *k, uint64_t handle) { return &k->slabs[handle >> 24]; }
static inline struct obj *obj_of(kasan_t *k, uint64_t handle) { return &slab_of(k, handle)->objs[handle & 0xFFFFFF]; }
static inline uint64_t obj_addr(kasan_t *k, uint64_t handle)
{
    struct slab *s = slab_of(k, handle);
    return s->first + (uint64_t)(handle & 0xFFFFFF) * s->slot;
}
uint64_t cache_size(const struct slab *s);

/* Every live object: fn(k, handle, object, ctx); the leak scanner's walk over the heap. */
void for_each_live_object(kasan_t *k, void (*fn)(kasan_t *, uint64_t, struct obj *, void *), void *ctx);

/* kmemleak.c */
void leak_note_alloc(kasan_t *k, struct obj *o);
void leak_destroy(kasan_t *k);

/* checkpoint.c: the object at handle changes state; a rollback must put it back */
void checkpoint_touch(kasan_t *k, uint64_t handle);
static inline void touch(kasan_t *k, uint64_t handle) { if (UNLIKELY(k->cp != NULL)) checkpoint_touch(k, handle); }
void checkpoint_destroy(kasan_t *k);

/* quarantine.c */
void quarantine_put(kasan_t *k, uint64_t handle, uint64_t bytes);

/* intercept.c */
void intercept_string_fn(kasan_t *k, int fn);
/* fortify.c */
void intercept_fortify_fn(kasan_t *k, int fn);
/* libc.c: the number parsers, the printf and scanf families, streams and reads */
void intercept_libc_fn(kasan_t *k, int fn);
void libc_destroy(kasan_t *k);
/* Is a bad access a running C library call's own, reported once at its caller: a write into the
 * buffer of a call judged at its return, or any access to a range reported at its entry? */
int libc_quiet(kasan_t *k, uint64_t addr, uint64_t size, int is_write);
static inline int call_quiet(kasan_t *k, uint64_t addr, uint64_t size, int is_write)
{
    return UNLIKELY(k->calls != NULL) && libc_quiet(k, addr, size, is_write);
}

/* shadow.c */
int shadow_init(kasan_t *k, int share);
void shadow_destroy(kasan_t *k);
uint32_t shadow_resolve(kasan_t *k, uint64_t chunk);
uint8_t *shadow_own(kasan_t *k, uint64_t chunk);
void shadow_fill(kasan_t *k, uint64_t addr, uint64_t len, uint8_t value);
void shadow_unpoison(kasan_t *k, uint64_t addr, uint64_t size, uint64_t poison_to, uint8_t rz);
int shadow_bad(kasan_t *k, uint64_t addr, uint64_t size);
int shadow_range_bad(kasan_t *k, uint64_t lo, uint64_t hi);
void shadow_release(kasan_t *k);
static inline uint8_t *shadow_page(kasan_t *k, uint32_t pg) { return k->sm.pool + ((uint64_t)pg << PAGE_SHIFT); }
/* The shadow byte of addr (< SHADOW_VA_LIMIT). */
static inline int8_t shadow_at(kasan_t *k, uint64_t addr)
{
    uint64_t chunk = addr >> SHADOW_CHUNK_SHIFT;
    const uint32_t *leaf = k->sm.dir[chunk >> SHADOW_LEAF_SHIFT];
    uint32_t pg = leaf ? leaf[chunk & (SHADOW_LEAF_SIZE - 1)] : 0;
    if (UNLIKELY(!pg)) pg = shadow_resolve(k, chunk);
    return (int8_t)shadow_page(k, pg)[(addr & (SHADOW_CHUNK - 1)) >> 3];
}
/* The per-access check (memory_is_poisoned): the common case is an access inside one granule. */
static inline int shadow_access_bad(kasan_t *k, uint64_t addr, uint64_t size)
{
    uint64_t last = addr + size - 1;
    if (LIKELY((addr >> 3) == (last >> 3))) {
        int8_t s = shadow_at(k, addr);
        return !(s == 0 || (s > 0 && (int8_t)(last & 7) < s));
    }
    return shadow_bad(k, addr, size);
}

/* gshadow.c: make the guest see the current shadow pages (now: even when only shared pages
 * moved) */
void shadow_sync(kasan_t *k, int now);

void access_error(kasan_t *k, uint64_t addr, unsigned size, int is_write, const uint64_t *cand, int ncand);

/* inline.c */
void inline_fill(kasan_t *k, uint64_t addr, uint64_t len, uint8_t value);
void inline_destroy(kasan_t *k);

/* mmio.c */
void mmio_poisoned(kasan_t *k, uint64_t addr, uint64_t len);
/* tags.c, for the tag modes' views (mmio.c) */
int tags_page_matches(kasan_t *k, uint64_t page, uint8_t ptag);
int tags_access_bad(kasan_t *k, uint64_t tagged, uint64_t size);
void mmio_destroy(kasan_t *k);
void mmio_rollback(kasan_t *k);

/* tags.c */
uint64_t tag_rnd(struct tag_state *t);
void tag_set(kasan_t *k, uint64_t addr, uint64_t len, uint8_t tag);
int tag_at(kasan_t *k, uint64_t addr);   /* -1: memory without tags */

#endif
