/* The calls emsan stands in for: allocator entry points decoded once for every detector (each
 * reads only the arguments its function has), and the return to the caller. */
#include "runtime.h"

#define EINVAL 22
#define ENOMEM 12

int call_op(int fn)
{
    switch (fn) {
    case EMSAN_FN_MALLOC: case EMSAN_FN_CALLOC: case EMSAN_FN_MEMALIGN: case EMSAN_FN_POSIX_MEMALIGN:
    case EMSAN_FN_ALIGNED_ALLOC: case EMSAN_FN_MEMALIGN_OR_ALIGNED_ALLOC: case EMSAN_FN_VALLOC: case EMSAN_FN_PVALLOC:
    case EMSAN_FN_NEW: case EMSAN_FN_NEW_ARRAY: case EMSAN_FN_NEW_ALIGNED: case EMSAN_FN_NEW_ARRAY_ALIGNED:
    case EMSAN_FN_NEW_NOTHROW: case EMSAN_FN_NEW_ARRAY_NOTHROW: case EMSAN_FN_NEW_ALIGNED_NOTHROW:
    case EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW:
        return CALL_ALLOC;
    case EMSAN_FN_FREE: case EMSAN_FN_DELETE: case EMSAN_FN_DELETE_ARRAY:
    case EMSAN_FN_DELETE_SIZED: case EMSAN_FN_DELETE_ARRAY_SIZED: case EMSAN_FN_DELETE_ALIGNED:
    case EMSAN_FN_DELETE_ARRAY_ALIGNED: case EMSAN_FN_DELETE_SIZED_ALIGNED: case EMSAN_FN_DELETE_ARRAY_SIZED_ALIGNED:
        return CALL_FREE;
    case EMSAN_FN_REALLOC: case EMSAN_FN_REALLOCARRAY: return CALL_REALLOC;
    case EMSAN_FN_USABLE_SIZE: return CALL_USABLE_SIZE;
    case EMSAN_FN_TAG_MEMORY: return CALL_TAG_MEMORY;
    default: return CALL_NONE;
    }
}

static inline uint64_t arg(rt_t *rt, int i) { return reg(rt, EMSAN_REG_ARG0 + i); }

static int kind_of(int fn)
{
    switch (fn) {
    case EMSAN_FN_NEW: case EMSAN_FN_NEW_ALIGNED: case EMSAN_FN_NEW_NOTHROW: case EMSAN_FN_NEW_ALIGNED_NOTHROW:
    case EMSAN_FN_DELETE: case EMSAN_FN_DELETE_SIZED: case EMSAN_FN_DELETE_ALIGNED: case EMSAN_FN_DELETE_SIZED_ALIGNED:
        return EMSAN_KIND_NEW;
    case EMSAN_FN_NEW_ARRAY: case EMSAN_FN_NEW_ARRAY_ALIGNED: case EMSAN_FN_NEW_ARRAY_NOTHROW:
    case EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW: case EMSAN_FN_DELETE_ARRAY: case EMSAN_FN_DELETE_ARRAY_SIZED:
    case EMSAN_FN_DELETE_ARRAY_ALIGNED: case EMSAN_FN_DELETE_ARRAY_SIZED_ALIGNED:
        return EMSAN_KIND_NEW_ARRAY;
    default:
        return EMSAN_KIND_MALLOC;
    }
}

/* A request the C library refuses: the error emsan reports and, for posix_memalign, the code. */
static void refused(struct alloc_call *c, int error, uint64_t ret)
{
    if (!c->error) c->error = error;
    c->bad = 1;
    c->bad_ret = ret;
}

/* count * elem (calloc, reallocarray): an overflow is refused with ENOMEM. */
static void product(struct alloc_call *c, uint64_t n, uint64_t m, int error)
{
    unsigned __int128 total = (unsigned __int128)n * m;
    c->count = n;
    c->elem = m;
    c->size = (uint64_t)total;
    if (total >> 64) refused(c, error, 0);
}

/* memalign and aligned_alloc as glibc does them: an alignment that is not a power of two is
 * rounded up to one (reported all the same: both are documented to need one), one too large
 * to round is refused with EINVAL; 0 means the default (for aligned_alloc, reported: C11 says
 * every valid alignment is a power of two). */
static void glibc_alignment(struct alloc_call *c, int error)
{
    uint64_t a = c->align;
    if (a > (1ULL << 63)) { refused(c, error, 0); return; }
    if (!is_pow2(a) && (a || error == EMSAN_ALLOCERR_ALIGNED_ALLOC)) c->error = error;
    if (a && !is_pow2(a)) c->align = 1ULL << (64 - __builtin_clzll(a));
}

void decode_alloc_call(rt_t *rt, int fn, struct alloc_call *c)
{
    memset(c, 0, sizeof *c);
    c->op = call_op(fn);
    c->kind = kind_of(fn);
    switch (fn) {
    case EMSAN_FN_MALLOC: case EMSAN_FN_NEW: case EMSAN_FN_NEW_ARRAY: case EMSAN_FN_NEW_NOTHROW:
    case EMSAN_FN_NEW_ARRAY_NOTHROW:
        c->size = arg(rt, 0);
        break;
    case EMSAN_FN_NEW_ALIGNED: case EMSAN_FN_NEW_ARRAY_ALIGNED: case EMSAN_FN_NEW_ALIGNED_NOTHROW:
    case EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW:
        /* libstdc++ throws std::bad_alloc for an alignment that is not a power of two */
        c->size = arg(rt, 0);
        c->align = arg(rt, 1);
        if (!is_pow2(c->align)) refused(c, EMSAN_ALLOCERR_ALIGNMENT, 0);
        break;
    case EMSAN_FN_CALLOC:
        product(c, arg(rt, 0), arg(rt, 1), EMSAN_ALLOCERR_CALLOC_OVERFLOW);
        c->zero = 1;
        break;
    case EMSAN_FN_MEMALIGN: case EMSAN_FN_ALIGNED_ALLOC: case EMSAN_FN_MEMALIGN_OR_ALIGNED_ALLOC:
        c->align = arg(rt, 0);
        c->size = arg(rt, 1);
        glibc_alignment(c, fn == EMSAN_FN_ALIGNED_ALLOC ? EMSAN_ALLOCERR_ALIGNED_ALLOC : EMSAN_ALLOCERR_ALIGNMENT);
        break;
    case EMSAN_FN_POSIX_MEMALIGN:
        c->out = arg(rt, 0);
        c->align = arg(rt, 1);
        c->size = arg(rt, 2);
        if (!c->align || c->align % 8 || !is_pow2(c->align / 8))
            refused(c, EMSAN_ALLOCERR_POSIX_MEMALIGN, EINVAL);
        break;
    case EMSAN_FN_VALLOC:
        c->size = arg(rt, 0);
        c->align = PAGE_SIZE;
        break;
    case EMSAN_FN_PVALLOC: {            /* the round-up must not wrap: pvalloc(SIZE_MAX) is NULL */
        uint64_t n = arg(rt, 0);
        c->align = PAGE_SIZE;
        c->size = round_up(n ? n : 1, PAGE_SIZE);
        if (n > ~0ULL - (PAGE_SIZE - 1)) {
            c->size = n;
            refused(c, EMSAN_ALLOCERR_PVALLOC_OVERFLOW, 0);
        }
        break;
    }
    case EMSAN_FN_REALLOC:
        c->ptr = arg(rt, 0);
        c->size = arg(rt, 1);
        break;
    case EMSAN_FN_REALLOCARRAY:
        c->ptr = arg(rt, 0);
        product(c, arg(rt, 1), arg(rt, 2), EMSAN_ALLOCERR_REALLOCARRAY_OVERFLOW);
        break;
    case EMSAN_FN_FREE: case EMSAN_FN_DELETE: case EMSAN_FN_DELETE_ARRAY: case EMSAN_FN_USABLE_SIZE:
        c->ptr = arg(rt, 0);
        break;
    case EMSAN_FN_DELETE_SIZED: case EMSAN_FN_DELETE_ARRAY_SIZED:               /* (p, size) */
        c->ptr = arg(rt, 0);
        c->size = arg(rt, 1);
        c->sized = 1;
        break;
    case EMSAN_FN_DELETE_ALIGNED: case EMSAN_FN_DELETE_ARRAY_ALIGNED:           /* (p, align) */
        c->ptr = arg(rt, 0);
        c->align = arg(rt, 1);
        c->aligned = 1;
        break;
    case EMSAN_FN_DELETE_SIZED_ALIGNED: case EMSAN_FN_DELETE_ARRAY_SIZED_ALIGNED:   /* (p, size, align) */
        c->ptr = arg(rt, 0);
        c->size = arg(rt, 1);
        c->align = arg(rt, 2);
        c->sized = c->aligned = 1;
        break;
    case EMSAN_FN_TAG_MEMORY:               /* __hwasan_tag_memory(p, tag, size) */
        c->ptr = arg(rt, 0);
        c->tag = (uint8_t)arg(rt, 1);
        c->size = arg(rt, 2);
        break;
    default:
        break;
    }
    if (c->op == CALL_ALLOC || c->op == CALL_REALLOC) {
        if (!c->bad && c->size > EMSAN_MAX_ALLOCATION) refused(c, EMSAN_ALLOCERR_SIZE, ENOMEM);
        if (c->bad && c->out && !c->bad_ret) c->bad_ret = ENOMEM;
    }
}

void refuse_in_guest(rt_t *rt, int fn, const struct alloc_call *c)
{
    const uint64_t huge = ~0ULL;            /* every C library refuses it with ENOMEM */
    uint64_t set[3];
    int n = 0;
    switch (fn) {
    case EMSAN_FN_MALLOC: case EMSAN_FN_VALLOC: case EMSAN_FN_PVALLOC:
        set[0] = huge; n = 1; break;
    case EMSAN_FN_CALLOC:
        set[0] = huge; set[1] = 2; n = 2; break;
    case EMSAN_FN_REALLOC:                  /* realloc(NULL, huge): the old object stays */
        set[0] = 0; set[1] = huge; n = 2; break;
    case EMSAN_FN_REALLOCARRAY:
        set[0] = 0; set[1] = huge; set[2] = 2; n = 3; break;
    case EMSAN_FN_MEMALIGN: case EMSAN_FN_ALIGNED_ALLOC: case EMSAN_FN_MEMALIGN_OR_ALIGNED_ALLOC:
        if (c->align > (1ULL << 63)) return;        /* EINVAL as it is */
        set[0] = 16; set[1] = huge; n = 2; break;
    case EMSAN_FN_POSIX_MEMALIGN:
        if (c->bad_ret == EINVAL) return;
        set[0] = c->out; set[1] = c->align; set[2] = huge; n = 3; break;
    default:                                /* operator new: its own new-handler loop, bad_alloc */
        return;
    }
    for (int i = 0; i < n; i++) reg_set(rt->uc, rt->regs[EMSAN_REG_ARG0 + i], set[i]);
}

void return_to_caller(rt_t *rt, uint64_t value)
{
    void *uc = rt->uc;
    rt->returns++;
    reg_set(uc, rt->regs[EMSAN_REG_RET], value);
    if (rt->arm64) {
        reg_set(uc, rt->regs[EMSAN_REG_PC], reg_get(uc, rt->regs[EMSAN_REG_LR]));
    } else {
        uint64_t sp = reg_get(uc, rt->regs[EMSAN_REG_SP]), ret = 0;
        mem_get(uc, sp, &ret, 8);
        reg_set(uc, rt->regs[EMSAN_REG_SP], sp + 8);
        reg_set(uc, rt->regs[EMSAN_REG_PC], ret);    /* last: makes Unicorn leave the block */
    }
}
