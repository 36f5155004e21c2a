/* The runtime context every detector points to (the kernel's shape: a small core that KASAN's
 * modes and KFENCE sit on): engine access, the registers emsan reads, the stack depot and
 * collectors, and the error queue. All of it lives in host memory, outside the guest, so a
 * guest that scribbles over its memory cannot corrupt it. */
#ifndef EMSAN_RUNTIME_H
#define EMSAN_RUNTIME_H
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "engine.h"

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ULL << PAGE_SHIFT)
#define ERR_RING 64
#define MAX_ENTRIES 256                /* (detector, function) pairs a runtime serves */

static inline uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }
static inline int is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

/* Resource exhaustion (exhaust.c): what emsan ran out of first, or NULL. The run then ends with
 * one line and its own exit status; the metadata that could not be kept is simply not kept. */
extern const char *emsan_out_of;
static inline void out_of(const char *what) { if (!emsan_out_of) emsan_out_of = what; }

struct vec64 { uint64_t *v; size_t n, cap; };
static inline void vec_push(struct vec64 *a, uint64_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        uint64_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) { out_of("host memory"); return; }
        a->v = v; a->cap = cap;
    }
    a->v[a->n++] = x;
}

/* Runs of free pages, each (first page << 24 | count): the first that fits, split, or
 * UINT64_MAX when none does. */
static inline uint64_t take_run(struct vec64 *runs, uint64_t n)
{
    for (size_t i = 0; i < runs->n; i++) {
        uint64_t r = runs->v[i], page = r >> 24, cnt = r & 0xFFFFFF;
        if (cnt >= n) {
            if (cnt == n) runs->v[i] = runs->v[--runs->n];
            else runs->v[i] = ((page + n) << 24) | (cnt - n);
            return page;
        }
    }
    return UINT64_MAX;
}

/* Binary search of an array of structs that start with {uint64_t lo, hi}, sorted and disjoint:
 * the one whose [lo, hi) holds a, or NULL. */
static inline void *range_find(void *base, size_t n, size_t size, uint64_t a)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint64_t *r = (const uint64_t *)((char *)base + mid * size);
        if (a < r[0]) hi = mid;
        else if (a >= r[1]) lo = mid + 1;
        else return (void *)r;
    }
    return NULL;
}

struct depot {
    uint64_t *pool; size_t used, cap;      /* records: [hash<<32 | len, frames...] */
    uint32_t *table; size_t tsize, count;  /* open addressing: handle = record offset + 1 */
};

/* A hook's user data: which detector stands in for which function (op: call_op(fn)). */
struct entry { void *owner; int fn; int op; };

/* Small, with what hooks read on every call first: it stays in a few cache lines. */
struct emsan_runtime {
    void *uc;
    int arm64;
    int regs[EMSAN_NREGS];             /* EMSAN_REG_* */
    uint64_t stack_lo, stack_hi;       /* the stack frame-pointer walks may read */
    /* stack collection (depot.c, scs.c, unwind.c) */
    struct scs_state *scs;
    struct cfi_state *cfi;
    struct sobj_state *sobj;           /* --stack-checks full (stackobj.c) */
    int stack_mode;                    /* EMSAN_STACKS_* */
    int no_depot;                      /* store every trace separately (the ablation) */
    int timed;                         /* time the collectors (--stats) */
    uint64_t stack_ns, stack_saves;
    uint64_t returns;                  /* return_to_caller calls (an intercept that returned) */
    struct depot depot;
    /* errors, until Python turns them into reports */
    emsan_error *errs;                 /* a ring of ERR_RING */
    unsigned err_head, err_count;
    uint64_t errors;
    void (*on_error)(void);
    struct entry **entries;            /* MAX_ENTRIES, each allocated when first asked for */
    size_t nentries;
    int gprs[EMSAN_MAX_GPRS];          /* every general register, in the arch layer's order */
    int ngprs;
    uint32_t tid;                      /* the guest thread running now (allocation and free tracks) */
    int fpargs[8];                     /* the vector registers of floating-point arguments */
};

typedef struct emsan_runtime rt_t;

/* Guest addresses: on arm64 the top byte is a tag the MMU ignores (Top-Byte-Ignore), so
 * emsan strips it before touching guest memory itself. */
#define TAG_SHIFT 56
#define UNTAG_MASK 0x00FFFFFFFFFFFFFFULL
/* Return addresses: user addresses are below 2^48 (arm64 pointer authentication sets bits above). */
#define RET_MASK 0x0000FFFFFFFFFFFFULL
static inline uint64_t guest_addr(const rt_t *rt, uint64_t a) { return rt->arm64 ? a & UNTAG_MASK : a; }
static inline uint64_t reg(const rt_t *rt, int which) { return reg_get(rt->uc, rt->regs[which]); }

/* runtime.c */
/* A new error record (the queue's, or a scratch one when the queue is full), counted; the
 * detector fills in its details, then error_raise() hands the queue to Python. */
emsan_error *error_new(rt_t *rt, int type, uint64_t addr, uint64_t size, int is_write, uint64_t pc, uint32_t stack);
void error_raise(rt_t *rt);
void report_error(rt_t *rt, int type, uint64_t addr, uint64_t size, int is_write, uint64_t pc, uint32_t stack,
                  int fn, int kind);
void *rt_entry(rt_t *rt, void *owner, int fn);
void guest_copy(rt_t *rt, uint64_t dst, uint64_t src, uint64_t n);
void guest_zero(rt_t *rt, uint64_t dst, uint64_t n);

/* calls.c: the allocator entry points, decoded once for every detector */
enum { CALL_NONE, CALL_ALLOC, CALL_FREE, CALL_REALLOC, CALL_USABLE_SIZE, CALL_TAG_MEMORY };
struct alloc_call {
    int op;                            /* CALL_* */
    int kind;                          /* EMSAN_KIND_*: allocation or deallocation family */
    int zero;                          /* calloc: the object starts zeroed */
    int bad;                           /* the C library refuses the request (overflow, alignment, size) */
    uint64_t bad_ret;                  /* ... and what the function returns then (posix_memalign) */
    int error;                         /* EMSAN_ALLOCERR_*: what is wrong with the request, 0 if nothing */
    int sized, aligned;                /* deallocation: passes the object's size, its alignment */
    uint64_t size;                     /* bytes asked for (calloc, reallocarray: the product);
                                        * sized delete: the size it passes */
    uint64_t count, elem;              /* calloc, reallocarray: the two factors */
    uint64_t align;                    /* allocations: 0 means the default (glibc rounds a memalign
                                        * alignment that is not a power of two up, as here);
                                        * aligned delete: the alignment it passes */
    uint64_t ptr;                      /* free, realloc, usable size: the pointer; tagging: the address */
    uint64_t out;                      /* posix_memalign: where the pointer goes (0: returned) */
    uint8_t tag;                       /* __hwasan_tag_memory's tag */
};
int call_op(int fn);
void decode_alloc_call(rt_t *rt, int fn, struct alloc_call *c);
/* Rewrite a refused call's arguments into a request the C library refuses the same way (NULL
 * with the same errno, or posix_memalign's code), for the guest's own function to run. */
void refuse_in_guest(rt_t *rt, int fn, const struct alloc_call *c);
/* Return from the function emsan stood in for, with `value`, as its own `ret` would. */
void return_to_caller(rt_t *rt, uint64_t value);

/* depot.c */
uint32_t depot_save(rt_t *rt, const uint64_t *frames, int n);
int depot_get(rt_t *rt, uint32_t handle, uint64_t *out, int max);
/* The current call stack, saved in the depot: pc == 0 at an allocator's entry (none with
 * --stacks none), else a report's, starting at pc. */
uint32_t stack_here(rt_t *rt, uint64_t pc, int at_entry);
/* Integer argument register i of a call at its entry (< 8 on arm64, < 6 on x86-64). */
static inline int int_arg_reg(const rt_t *rt, int i) { return rt->arm64 ? rt->gprs[i] : rt->regs[EMSAN_REG_ARG0 + i]; }

/* collectors filling frames[EMSAN_STACK_DEPTH]; they return the count (depot.c, scs.c, unwind.c) */
int stack_fp(rt_t *rt, uint64_t pc, int at_entry, uint64_t *frames);
uint32_t stack_scs_save(rt_t *rt, uint64_t pc, int at_entry);     /* stack_scs, saved in the depot (remembered) */
int stack_cfi(rt_t *rt, uint64_t pc, int at_entry, uint64_t *frames);
int stack_x18(rt_t *rt, uint64_t pc, uint64_t *frames);
void scs_destroy(rt_t *rt);
/* The shadow call stack's live entries, outermost first: {return address, x86-64: its slot /
 * arm64: the caller's sp at the call}; 0 when there are none or some were lost. */
size_t scs_entries(rt_t *rt, const uint64_t **pairs);
/* stackobj.c: the --stack-checks full check of a range the guest's bounds checks passed;
 * nonzero if it was reported. pc: the access's (0: the current PC); at_entry: it is an
 * intercepted function's first instruction. */
int stack_objects_check(rt_t *rt, uint64_t addr, uint64_t size, int is_write, uint64_t pc, int fn, int at_entry);
void sobj_destroy(rt_t *rt);
void scs_stats(rt_t *rt, emsan_stack_stats *out);
void scs_own_code(rt_t *rt);       /* an intercepted function's own code runs after all */
void cfi_destroy(rt_t *rt);

#endif
