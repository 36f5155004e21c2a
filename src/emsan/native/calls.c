/* The calls emsan stands in for: allocator entry points decoded once for every detector (each
 * reads only the arguments its function has), and the return to the caller. */
#include "runtime.h"

#define EINVAL 22
#define ENOMEM 12

int call_op(int fn)
{
    switch (fn) {
    case EMSAN_FN_MALLOC: case EMSAN_FN_CALLOC: case EMSAN_FN_MEMALIGN: case EMSAN_FN_POSIX_MEMALIGN:
    case EMSAN_FN_ALIGNED_ALLOC: case EMSAN_FN_VALLOC: case EMSAN_FN_PVALLOC:
    case EMSAN_FN_NEW: case EMSAN_FN_NEW_ARRAY: case EMSAN_FN_NEW_ALIGNED: case EMSAN_FN_NEW_ARRAY_ALIGNED:
    case EMSAN_FN_NEW_NOTHROW: case EMSAN_FN_NEW_ARRAY_NOTHROW: case EMSAN_FN_NEW_ALIGNED_NOTHROW:
    case EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW:
        return CALL_ALLOC;
    case EMSAN_FN_FREE: case EMSAN_FN_DELETE: case EMSAN_FN_DELETE_ARRAY: return CALL_FREE;
    case EMSAN_FN_REALLOC: case EMSAN_FN_REALLOCARRAY: return CALL_REALLOC;
    case EMSAN_FN_USABLE_SIZE: return CALL_USABLE_SIZE;
    case EMSAN_FN_TAG_MEMORY: return CALL_TAG_MEMORY;
    default: return CALL_NONE;
    }
}

static inline uint64_t arg(rt_t *rt, int i) { return reg(rt, EMSAN_REG_ARG0 + i); }

/* n * m, or 0 with c->bad set when it overflows (calloc, reallocarray return NULL). */
static uint64_t product(struct alloc_call *c, uint64_t n, uint64_t m)
{
    unsigned __int128 total = (unsigned __int128)n * m;
    if (total >> 64) c->bad = 1;
    return (uint64_t)total;
}

static int kind_of(int fn)
{
    switch (fn) {
    case EMSAN_FN_NEW: case EMSAN_FN_NEW_ALIGNED: case EMSAN_FN_NEW_NOTHROW: case EMSAN_FN_NEW_ALIGNED_NOTHROW:
    case EMSAN_FN_DELETE:
        return EMSAN_KIND_NEW;
    case EMSAN_FN_NEW_ARRAY: case EMSAN_FN_NEW_ARRAY_ALIGNED: case EMSAN_FN_NEW_ARRAY_NOTHROW:
    case EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW: case EMSAN_FN_DELETE_ARRAY:
        return EMSAN_KIND_NEW_ARRAY;
    default:
        return EMSAN_KIND_MALLOC;
    }
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
        c->size = arg(rt, 0);
        c->align = arg(rt, 1);
        c->bad = !is_pow2(c->align);
        break;
    case EMSAN_FN_CALLOC:
        c->size = product(c, arg(rt, 0), arg(rt, 1));
        c->zero = 1;
        break;
    case EMSAN_FN_MEMALIGN:             /* glibc rounds an alignment up to a power of two */
        c->align = arg(rt, 0);
        c->size = arg(rt, 1);
        c->bad = c->align > (1ULL << 63);
        while (!c->bad && !is_pow2(c->align) && c->align > 16) c->align += c->align & -c->align;
        if (c->align <= 16) c->align = 16;
        break;
    case EMSAN_FN_ALIGNED_ALLOC:
        c->align = arg(rt, 0);
        c->size = arg(rt, 1);
        c->bad = !is_pow2(c->align);
        break;
    case EMSAN_FN_POSIX_MEMALIGN:
        c->out = arg(rt, 0);
        c->align = arg(rt, 1);
        c->size = arg(rt, 2);
        c->bad = !is_pow2(c->align) || c->align % 8;
        c->bad_ret = EINVAL;
        break;
    case EMSAN_FN_VALLOC:
        c->size = arg(rt, 0);
        c->align = PAGE_SIZE;
        break;
    case EMSAN_FN_PVALLOC: {            /* the round-up must not wrap: pvalloc(SIZE_MAX) is NULL */
        uint64_t n = arg(rt, 0);
        c->bad = n > -PAGE_SIZE;
        c->size = c->bad ? 0 : round_up(n ? n : 1, PAGE_SIZE);
        c->align = PAGE_SIZE;
        break;
    }
    case EMSAN_FN_REALLOC:
        c->ptr = arg(rt, 0);
        c->size = arg(rt, 1);
        break;
    case EMSAN_FN_REALLOCARRAY:
        c->ptr = arg(rt, 0);
        c->size = product(c, arg(rt, 1), arg(rt, 2));
        break;
    case EMSAN_FN_FREE: case EMSAN_FN_DELETE: case EMSAN_FN_DELETE_ARRAY: case EMSAN_FN_USABLE_SIZE:
        c->ptr = arg(rt, 0);
        break;
    case EMSAN_FN_TAG_MEMORY:               /* __hwasan_tag_memory(p, tag, size) */
        c->ptr = arg(rt, 0);
        c->tag = (uint8_t)arg(rt, 1);
        c->size = arg(rt, 2);
        break;
    default:
        break;
    }
}

/* A failed posix_memalign reports ENOMEM; the others return NULL. */
uint64_t alloc_failed(const struct alloc_call *c) { return c->out ? ENOMEM : 0; }

void return_to_caller(rt_t *rt, uint64_t value)
{
    void *uc = rt->uc;
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
