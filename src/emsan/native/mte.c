/* hw-tags: the MTE instructions Unicorn does not implement (it traps them as undefined), done
 * by emsan on the guest's registers and emsan's tag table. */
#include "tags.h"

#define MTE_BLOCK 256                    /* LDGM/STGM block: GMID_EL1.BS = 6 (64 words), as QEMU */

static inline uint64_t xr(kasan_t *k, int r, int sp)     /* X[r]; r == 31 is SP or XZR */
{
    if (r == 31 && !sp) return 0;
    return xreg(k, r);
}

static inline void xw(kasan_t *k, int r, int sp, uint64_t v)
{
    if (r == 31 && !sp) return;
    set_xreg(k, r, v);
}

static inline uint64_t with_tag(uint64_t p, unsigned tag) { return (p & ~(0xFULL << 56)) | ((uint64_t)(tag & 0xF) << 56); }
static inline unsigned alloc_tag(uint64_t p) { return (unsigned)(p >> 56) & 0xF; }
static inline uint64_t sext(uint64_t v, int bits) { return (uint64_t)((int64_t)(v << (64 - bits)) >> (64 - bits)); }

static void mte_set(kasan_t *k, uint64_t addr, uint64_t len, unsigned tag)
{
    tag_set(k, (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1), len, (uint8_t)(0xF0 | (tag & 0xF)));
}

static void mte_zero(kasan_t *k, uint64_t addr, uint64_t len)
{
    static const uint8_t zeros[MTE_BLOCK];
    mem_put(k->rt->uc, (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1), zeros, len);
}

/* Returns 1 when the instruction at the PC was an MTE instruction, now done (PC advanced). */
EXPORT int emsan_mte_emulate(emsan_kasan *k)
{
    if (!k->tags || !k->tags->hw) return 0;
    void *uc = k->rt->uc;
    uint64_t pc = reg(k->rt, EMSAN_REG_PC);
    uint32_t i;
    if (mem_get(uc, pc, &i, 4)) return 0;
    int rd = (int)(i & 31), rn = (int)((i >> 5) & 31), rm = (int)((i >> 16) & 31);
    if ((i & 0xFFE0FC00) == 0x9AC01000) {                         /* IRG Xd|SP, Xn|SP, Xm */
        uint16_t exclude = (uint16_t)xr(k, rm, 0);
        unsigned tag = 0;
        if (exclude != 0xFFFF) {
            do tag = (unsigned)(tag_rnd(k->tags) >> 60); while (exclude & (1u << tag));
        }
        xw(k, rd, 1, with_tag(xr(k, rn, 1), tag));
    } else if ((i & 0xFFE0FC00) == 0x9AC01400) {                  /* GMI Xd, Xn|SP, Xm */
        xw(k, rd, 0, xr(k, rm, 0) | (1ULL << alloc_tag(xr(k, rn, 1))));
    } else if ((i & 0xBFC0C000) == 0x91800000) {                  /* ADDG / SUBG */
        uint64_t off = ((i >> 16) & 63) << 4;
        unsigned tadd = (i >> 10) & 15;
        uint64_t src = xr(k, rn, 1);
        uint64_t v = (i & 0x40000000) ? src - off : src + off;
        xw(k, rd, 1, with_tag(v, alloc_tag(src) + tadd));
    } else if ((i & 0xFFE0FC00) == 0x9AC00000) {                  /* SUBP Xd, Xn|SP, Xm|SP */
        xw(k, rd, 0, sext(xr(k, rn, 1), 56) - sext(xr(k, rm, 1), 56));
    } else if ((i & 0xFF200000) == 0xD9200000) {                  /* STG, STZG, ST2G, STZ2G, LDG, *GM */
        unsigned opc = (i >> 22) & 3, op2 = (i >> 10) & 3;
        uint64_t imm = sext((i >> 12) & 0x1FF, 9) << 4;
        uint64_t base = xr(k, rn, 1);
        if (op2 == 0) {
            if (opc == 1) {                                        /* LDG Xt, [Xn|SP, #simm] */
                int mt = tag_at(k, (base + imm) & ~(uint64_t)(TAG_GRANULE - 1));
                xw(k, rd, 0, with_tag(xr(k, rd, 0), mt < 0 ? 0 : (unsigned)mt));
            } else {
                uint64_t blk = (base & UNTAG_MASK) & ~(uint64_t)(MTE_BLOCK - 1);
                if (opc == 3) {                                    /* LDGM Xt, [Xn|SP] */
                    uint64_t v = 0;
                    for (int g = 0; g < MTE_BLOCK / TAG_GRANULE; g++) {
                        int mt = tag_at(k, blk + (uint64_t)g * TAG_GRANULE);
                        v |= (uint64_t)(mt < 0 ? 0 : mt & 0xF) << (4 * g);
                    }
                    xw(k, rd, 0, v);
                } else if (opc == 2) {                             /* STGM Xt, [Xn|SP] */
                    uint64_t v = xr(k, rd, 0);
                    for (int g = 0; g < MTE_BLOCK / TAG_GRANULE; g++)
                        mte_set(k, blk + (uint64_t)g * TAG_GRANULE, TAG_GRANULE, (unsigned)(v >> (4 * g)));
                } else {                                           /* STZGM Xt, [Xn|SP] */
                    mte_zero(k, blk, MTE_BLOCK);
                    mte_set(k, blk, MTE_BLOCK, alloc_tag(xr(k, rd, 0)));
                }
            }
        } else {
            uint64_t addr = op2 == 1 ? base : base + imm;         /* post-index uses the old base */
            uint64_t len = opc >= 2 ? 2 * TAG_GRANULE : TAG_GRANULE;
            unsigned tag = alloc_tag(xr(k, rd, 1));                /* Xt|SP */
            if (opc & 1) mte_zero(k, addr, len);                   /* STZG, STZ2G */
            mte_set(k, addr, len, tag);
            if (op2 != 2) xw(k, rn, 1, base + imm);                /* writeback */
        }
    } else if ((i & 0xFFC00000) == 0x68800000 || (i & 0xFFC00000) == 0x69000000 ||
               (i & 0xFFC00000) == 0x69800000) {                   /* STGP Xt1, Xt2, [Xn|SP, #simm] */
        unsigned mode = (i >> 23) & 3;                             /* 1 post, 2 offset, 3 pre */
        uint64_t imm = sext((i >> 15) & 0x7F, 7) << 4;
        int rt2 = (int)((i >> 10) & 31);
        uint64_t base = xr(k, rn, 1);
        uint64_t addr = mode == 1 ? base : base + imm;
        uint64_t pair[2] = {xr(k, rd, 0), xr(k, rt2, 0)};
        mem_put(uc, (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1), pair, 16);
        mte_set(k, addr, TAG_GRANULE, alloc_tag(addr));
        if (mode != 2) xw(k, rn, 1, base + imm);
    } else {
        return 0;
    }
    k->tags->mte_traps++;
    shadow_sync(k, 0);                   /* --checks mmio: the TLB sees the new tags */
    reg_set(uc, k->rt->regs[EMSAN_REG_PC], pc + 4);
    return 1;
}
