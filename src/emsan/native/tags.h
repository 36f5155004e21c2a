/* The state of the tag-based modes, shared by tags.c and mte.c. */
#ifndef EMSAN_TAGS_H
#define EMSAN_TAGS_H
#include "kasan.h"

#define RING_SIZE 32768                  /* the kernel's kasan.stack_ring_size default */
#define PCC_SIZE 4096
#define TAGS_PER_PAGE (PAGE_SIZE / TAG_GRANULE)

struct ring_entry {
    uint64_t ptr;                        /* tagged */
    uint64_t size;                       /* requested size */
    uint64_t cache_size;                 /* the kernel's entry->size (cache->object_size) */
    uint32_t stack;
    uint32_t tid;                        /* the thread that allocated or freed */
    uint8_t is_free;
};

struct pc_rn { uint64_t pc; int32_t rn; int32_t rm; };
struct foreign_page { uint64_t page; uint8_t *tags; };

struct tag_state {
    int hw;                              /* hw-tags: 4-bit MTE tags, MTE instructions emulated */
    uint8_t **page;                      /* per heap page: tags of its 256 granules; NULL = invalid */
    uint64_t rng;
    struct ring_entry *ring;
    uint64_t ring_pos;
    struct ring_entry *saved_ring;       /* a checkpoint's ring (checkpoint.c), or NULL */
    uint64_t saved_pos;
    struct pc_rn pcc[PCC_SIZE];
    struct foreign_page *fp;             /* tags set by guest MTE instructions outside the heap */
    size_t fp_cap, fp_n;
    uint64_t private_pages, mte_traps;
};

/* X[r] of the arm64 guest: the runtime's gprs are x0..x30, sp in that order. */
static inline uint64_t xreg(kasan_t *k, int r) { return reg_get(k->rt->uc, k->rt->gprs[r]); }
static inline void set_xreg(kasan_t *k, int r, uint64_t v) { reg_set(k->rt->uc, k->rt->gprs[r], v); }
int tag_matches(kasan_t *k, uint8_t ptr_tag, uint8_t mem_tag);

#endif
