/* Internal structures of emsan's native generic-mode heap. All of it lives in host memory,
 * outside the guest, so a guest that scribbles over its heap cannot corrupt it. */
#ifndef EMSAN_INTERNAL_H
#define EMSAN_INTERNAL_H
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "emsan_native.h"

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ULL << PAGE_SHIFT)
#define GRANULE 8

/* Kernel generic KASAN shadow codes (mm/kasan/kasan.h). */
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

typedef int (*reg_read_fn)(void *, int, void *);
typedef int (*reg_write_fn)(void *, int, const void *);
typedef int (*mem_read_fn)(void *, uint64_t, void *, size_t);
typedef int (*mem_write_fn)(void *, uint64_t, const void *, size_t);
typedef int (*emu_stop_fn)(void *);
extern emsan_api emsan_uc;

static inline uint64_t reg_get(void *uc, int id) { uint64_t v = 0; ((reg_read_fn)emsan_uc.uc_reg_read)(uc, id, &v); return v; }
static inline void reg_set(void *uc, int id, uint64_t v) { ((reg_write_fn)emsan_uc.uc_reg_write)(uc, id, &v); }
static inline int mem_get(void *uc, uint64_t a, void *buf, size_t n) { return ((mem_read_fn)emsan_uc.uc_mem_read)(uc, a, buf, n); }
static inline int mem_put(void *uc, uint64_t a, const void *buf, size_t n) { return ((mem_write_fn)emsan_uc.uc_mem_write)(uc, a, buf, n); }
static inline void emu_stop(void *uc) { ((emu_stop_fn)emsan_uc.uc_emu_stop)(uc); }

/* One object slot. */
struct obj {
    uint64_t size;          /* requested size */
    uint32_t alloc_stack, free_stack;
    uint8_t state, kind;
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

struct vec64 { uint64_t *v; size_t n, cap; };
static inline void vec_push(struct vec64 *a, uint64_t x) {
    if (a->n == a->cap) { a->cap = a->cap ? a->cap * 2 : 64; a->v = realloc(a->v, a->cap * sizeof *a->v); }
    a->v[a->n++] = x;
}

#define NCLASSES 14
#define LARGE_CLASS (-1)
#define ERR_RING 64

struct depot {
    uint64_t *pool; size_t used, cap;      /* records: [hash<<32 | len, frames...] */
    uint32_t *table; size_t tsize, count;  /* open addressing: handle = record offset + 1 */
};

struct entry { struct emsan_heap *h; int fn; };

struct shadow_map {
    uint8_t *pool;                     /* SHADOW_POOL_PAGES host pages; the guest may map them */
    uint32_t *dir[SHADOW_DIR_SIZE];    /* chunk -> pool page, leaves allocated on use */
    uint32_t next;                     /* next never-used pool page */
    struct vec64 spare;                /* released pool pages */
    int share;                         /* 0: every written chunk gets a private page (full shadow) */
    int exposed;                       /* mapped into the guest (gshadow.c) */
    int remapped;                      /* a chunk changed pages since the guest's TLB was flushed */
    int must_flush;                    /* ... and its old page was recycled: flush before the guest runs */
    uint64_t vm_lo, vm_size;           /* the mmap area, shadowed from what is mapped there */
    uint8_t *vm_pages;                 /* one bit per page of the area: mapped */
    struct vec64 release;              /* chunks that may no longer be used by any mapping */
};

struct emsan_heap {
    void *uc;
    int arm64;
    int regs[EMSAN_NREGS];
    uint64_t base, size, npages;
    uint64_t bump;                     /* next never-used page index */
    struct shadow_map sm;
    struct mmio_state *mm;             /* NULL unless accesses are checked through MMIO */
    uint32_t *page_slab;               /* per heap page: slab id + 1, 0 = none */
    struct slab *slabs; size_t nslabs, slabs_cap;
    struct vec64 freelist[NCLASSES];   /* handles (slab << 24 | index) ready for reuse */
    struct vec64 free_runs;            /* large-object page runs ready for reuse: (page << 24 | npages) */
    /* quarantine: FIFO of handles, bounded in bytes */
    uint64_t *q; size_t q_head, q_len, q_cap; uint64_t q_bytes, q_limit;
    struct depot depot;
    uint64_t stack_lo, stack_hi;
    int string_checks;
    emsan_error errs[ERR_RING]; unsigned err_head, err_count;
    emsan_stats stats;
    struct entry *entries[128];
    struct vec64 tolerant;             /* pairs lo, hi */
    void (*on_error)(void);
    /* stack collection (depot.c, scs.c, unwind.c) */
    int stack_mode;                    /* EMSAN_STACKS_* */
    int no_depot;                      /* store every trace separately (the ablation) */
    uint64_t stack_ns, stack_saves;
    struct scs_state *scs;
    struct cfi_state *cfi;
    /* tag-based modes (tags.c); tag_mode 0 = generic */
    int tag_mode;                      /* EMSAN_TAGS_SW / EMSAN_TAGS_HW */
    struct tag_state *tags;
};

#define EMSAN_MAX_REGS 40
struct mmio_state {                    /* --checks mmio (mmio.c) */
    uint8_t *host;                     /* the heap's memory, also mapped at its guest address */
    uint64_t view;                     /* physical address of the checking (MMIO) view */
    uint8_t *direct;                   /* per heap page: the TLB may map it straight to memory */
    int nregs, reg_ids[EMSAN_MAX_REGS];
    int err_pending, err_ncand;
    uint64_t err_cand[4];              /* guest PCs near the access (cpu_restore_state) */
    uint64_t err_block, err_regs[EMSAN_MAX_REGS];
    void *get_cpu, *restore;           /* QEMU's qemu_get_cpu() and cpu_restore_state() */
};

typedef struct emsan_heap heap_t;

/* shadow.c */
int shadow_init(heap_t *h, int share);
void shadow_destroy(heap_t *h);
uint32_t shadow_resolve(heap_t *h, uint64_t chunk);
uint8_t *shadow_own(heap_t *h, uint64_t chunk);
void shadow_fill(heap_t *h, uint64_t addr, uint64_t len, uint8_t value);
void shadow_unpoison(heap_t *h, uint64_t addr, uint64_t size, uint64_t poison_to, uint8_t rz);
int shadow_bad(heap_t *h, uint64_t addr, uint64_t size);
int shadow_range_bad(heap_t *h, uint64_t lo, uint64_t hi);
void shadow_release(heap_t *h);
void shadow_sync(heap_t *h, int now);     /* gshadow.c */
int shadow_tolerated(heap_t *h, uint64_t pc, uint64_t addr, uint64_t size);
#define READAHEAD 64            /* bytes a string routine's last loads may reach past its NUL */
void mmio_poisoned(heap_t *h, uint64_t addr, uint64_t len);   /* mmio.c */
void mmio_destroy(heap_t *h);
static inline uint8_t *shadow_page(heap_t *h, uint32_t pg) { return h->sm.pool + ((uint64_t)pg << PAGE_SHIFT); }
/* The shadow byte of addr (< SHADOW_VA_LIMIT). */
static inline int8_t shadow_at(heap_t *h, uint64_t addr) {
    uint64_t chunk = addr >> SHADOW_CHUNK_SHIFT;
    const uint32_t *leaf = h->sm.dir[chunk >> SHADOW_LEAF_SHIFT];
    uint32_t pg = leaf ? leaf[chunk & (SHADOW_LEAF_SIZE - 1)] : 0;
    if (UNLIKELY(!pg)) pg = shadow_resolve(h, chunk);
    return (int8_t)shadow_page(h, pg)[(addr & (SHADOW_CHUNK - 1)) >> 3];
}
/* The per-access check (memory_is_poisoned): the common case is an access inside one granule. */
static inline int shadow_access_bad(heap_t *h, uint64_t addr, uint64_t size) {
    uint64_t last = addr + size - 1;
    if (LIKELY((addr >> 3) == (last >> 3))) {
        int8_t s = shadow_at(h, addr);
        return !(s == 0 || (s > 0 && (int8_t)(last & 7) < s));
    }
    return shadow_bad(h, addr, size);
}

/* Guest addresses: on arm64 the top byte is a tag the MMU ignores (Top-Byte-Ignore), so
 * emsan strips it before touching guest memory itself. */
#define TAG_SHIFT 56
#define UNTAG_MASK 0x00FFFFFFFFFFFFFFULL
static inline uint64_t guest_addr(heap_t *h, uint64_t a) { return h->arm64 ? a & UNTAG_MASK : a; }

/* tags.c */
#define TAG_GRANULE 16
#define TAG_INVALID 0xFE                /* KASAN_TAG_INVALID: free memory, slab space no object owns */
#define TAG_KERNEL 0xFF                 /* KASAN_TAG_KERNEL: the match-all pointer tag */
uint8_t tag_random(heap_t *h);
void tag_set(heap_t *h, uint64_t addr, uint64_t len, uint8_t tag);
int tag_at(heap_t *h, uint64_t addr);   /* -1: memory without tags */
int tag_matches(heap_t *h, uint8_t ptr_tag, uint8_t mem_tag);
int tag_bad(heap_t *h, uint64_t tagged, uint64_t size);
void tag_ring_record(heap_t *h, uint64_t tagged, uint64_t size, uint64_t cache_size, uint32_t stack, int is_free);
int tag_tolerated(heap_t *h, uint64_t pc, uint64_t tagged, uint64_t size);
void tags_destroy(heap_t *h);

/* depot.c */
uint32_t depot_save(heap_t *h, const uint64_t *frames, int n);
uint32_t stack_here(heap_t *h, uint64_t pc, int at_entry);
int stack_fp(heap_t *h, uint64_t pc, int at_entry, uint64_t *frames);

/* scs.c, unwind.c: collectors filling frames[EMSAN_STACK_DEPTH]; return the count */
int stack_scs(heap_t *h, uint64_t pc, uint64_t *frames);
int stack_cfi(heap_t *h, uint64_t pc, int at_entry, uint64_t *frames);
int stack_x18(heap_t *h, uint64_t pc, uint64_t *frames);
void scs_destroy(heap_t *h);
void scs_stats(heap_t *h, emsan_stack_stats *out);
void cfi_destroy(heap_t *h);

/* heap.c */
void report_error(heap_t *h, int type, uint64_t addr, uint64_t size, int is_write, uint64_t pc, uint32_t stack, int fn, int kind);
void return_to_caller(heap_t *h, uint64_t value);
uint64_t heap_malloc(heap_t *h, uint64_t size);
int check_range(heap_t *h, uint64_t addr, uint64_t size, int is_write, int fn);
int in_tolerant_range(heap_t *h, uint64_t pc);

/* intercept.c, intercept_table.c */
void intercept_string_fn(heap_t *h, int fn);
void intercept_table_fn(heap_t *h, int fn);

/* quarantine.c */
void quarantine_put(heap_t *h, uint64_t handle, uint64_t bytes);
void release_object(heap_t *h, uint64_t handle);

#endif
