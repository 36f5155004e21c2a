/* AFL++'s side of a fuzzing target, for a Unicorn engine: the fork server (AFL++'s fork-server
 * protocol on descriptors 198/199, inputs through its shared-memory test cases), edge coverage
 * from a native block hook over the code ranges asked for, CompCov (a multi-byte comparison
 * scores each matching leading byte, so AFL++ can climb a magic value byte by byte), and
 * translation-cache sharing: a child tells the fork server which blocks it translated, and the
 * server translates them too, so that later children start with them.
 *
 * Protocol between the server and its child (one pipe each way):
 *   child -> server: 'T' + 8-byte pc (translate this block) | 'D' (persistent: iteration done)
 *   server -> child: 'G' (persistent: the next input is ready)
 * A child that dies (exits, crashes, is killed on a timeout) closes its pipe; the server then
 * reaps it and relays its wait status to AFL++. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "engine.h"

#define EXPORT __attribute__((visibility("default")))

#define FORKSRV_FD 198                       /* AFL++: control in, FORKSRV_FD + 1: status out */
#define FS_OPT_ENABLED 0x80000001u
#define FS_OPT_SHDMEM_FUZZ 0x01000000u
#define FS_OPT_NEWCMPLOG 0x02000000u           /* comparisons logged in AFL++ 4's cmp_map layout */
#define AFL_MAP_SIZE (1u << 16)               /* AFL++'s default map (no FS_OPT_MAPSIZE sent) */

/* CmpLog (AFL++'s include/cmplog.h layout): the operands of each comparison, for its
 * input-to-state stage, logged only by the second fork server afl-fuzz starts with -c 0. */
#define CMP_MAP_W 65536
#define CMP_MAP_H 32
#define CMP_TYPE_INS 1
struct cmp_header {
    unsigned hits : 24;
    unsigned id : 24;
    unsigned shape : 5;
    unsigned type : 2;
    unsigned attribute : 4;
    unsigned overflow : 1;
    unsigned reserved : 4;
} __attribute__((packed));
struct cmp_operands { uint64_t v0, v1, v0_128, v1_128; } __attribute__((packed));
struct cmp_map {
    struct cmp_header headers[CMP_MAP_W];
    struct cmp_operands log[CMP_MAP_W][CMP_MAP_H];
};

struct emsan_afl {
    void *uc;
    uint8_t *map;
    uint32_t mask;
    uint64_t prev;
    uint32_t *shm_input;                     /* AFL++'s test case: u32 length, then the bytes */
    struct cmp_map *cmp;                     /* the CmpLog server's log, NULL in the other */
    int has_afl, in_child;
    int to_server, from_server;              /* the child's ends of the two pipes */
    uint32_t ctl_request_cache;              /* uc_ctl_request_cache()'s control word */
    uint64_t cached;                         /* blocks the server translated for its children */
};

static inline uint64_t loc_hash(uint64_t pc)
{
    pc ^= pc >> 33;
    pc *= 0xff51afd7ed558ccdULL;
    pc ^= pc >> 33;
    return pc;
}

static void block_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    struct emsan_afl *a = ud;
    (void)uc; (void)size;
    uint64_t cur = loc_hash(address) & a->mask;
    a->map[cur ^ a->prev]++;
    a->prev = cur >> 1;
}

/* CmpLog: the comparison's operands, under a key of its address and the block before it (on
 * arm64 the address is not known: the block tells comparisons apart). */
static void cmp_log(struct emsan_afl *a, uint64_t cur, uint64_t arg1, uint64_t arg2, int bytes)
{
    uint64_t k = (cur ^ a->prev) & (CMP_MAP_W - 1);
    struct cmp_header *h = &a->cmp->headers[k];
    uint32_t hits;
    if (h->type != CMP_TYPE_INS) {
        h->type = CMP_TYPE_INS;
        h->hits = 1;
        hits = 0;
    } else {
        hits = h->hits++;
    }
    h->shape = bytes - 1;
    struct cmp_operands *o = &a->cmp->log[k][hits & (CMP_MAP_H - 1)];
    o->v0 = arg1;
    o->v1 = arg2;
}

/* CompCov: one map entry per leading byte the two operands share (the last byte is the
 * branch's own business). */
static inline int width(uint64_t v)
{
    return v < 0x100 ? 1 : v < 0x10000 ? 2 : v < 0x100000000ULL ? 4 : 8;
}

static void cmp_cb(void *uc, uint64_t address, uint64_t arg1, uint64_t arg2, uint32_t bits, void *ud)
{
    struct emsan_afl *a = ud;
    (void)uc;
    uint64_t x = arg1 ^ arg2, cur = loc_hash(address ^ 0x5bd1e995u);
    /* TCG compares registers (32 or 64 bits) whatever the instruction's operand size: a byte
     * compare is a 64-bit one of zero-extended values. The operands' magnitude stands in. */
    int bytes = width(arg1 > arg2 ? arg1 : arg2);
    if (bytes > (int)bits / 8)
        bytes = bits / 8;
    if (a->cmp != NULL && x != 0)
        cmp_log(a, cur, arg1, arg2, bytes);
    for (int i = bytes - 1; i >= 1; i--) {
        if ((x >> (8 * i)) & 0xff)
            break;
        a->map[((cur + i) ^ a->prev) & a->mask]++;
    }
}

static void new_block_cb(void *uc, engine_tb *cur, engine_tb *prev, void *ud)
{
    struct emsan_afl *a = ud;
    (void)uc; (void)prev;
    /* An empty block is the stub emu_start() ends at (its `until`): translated in the server,
     * outside emu_start, it would become a real block there and every later child would run
     * past its end address. */
    if (!a->in_child || a->to_server < 0 || cur == NULL || cur->icount == 0 || cur->size == 0)
        return;
    char msg[9];
    msg[0] = 'T';
    memcpy(msg + 1, &cur->pc, 8);
    if (write(a->to_server, msg, sizeof msg) != sizeof msg)
        a->to_server = -1;                   /* server gone: the child just runs on */
}

EXPORT struct emsan_afl *emsan_afl_new(void *uc, uint32_t ctl_request_cache)
{
    struct emsan_afl *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    a->uc = uc;
    a->mask = AFL_MAP_SIZE - 1;
    a->ctl_request_cache = ctl_request_cache;
    a->to_server = a->from_server = -1;
    const char *id = getenv("__AFL_SHM_ID");
    if (id != NULL) {
        void *m = shmat(atoi(id), NULL, 0);
        if (m != (void *)-1) {
            a->map = m;
            a->has_afl = 1;
        }
    }
    if (a->map == NULL)
        a->map = calloc(1, AFL_MAP_SIZE);
    const char *fid = getenv("__AFL_SHM_FUZZ_ID");
    if (a->has_afl && fid != NULL) {
        void *m = shmat(atoi(fid), NULL, 0);
        if (m != (void *)-1)
            a->shm_input = m;
    }
    const char *cid = getenv("__AFL_CMPLOG_SHM_ID");
    if (a->has_afl && cid != NULL && getenv("___AFL_EINS_ZWEI_POLIZEI___") != NULL) {
        void *m = shmat(atoi(cid), NULL, 0);
        if (m != (void *)-1)
            a->cmp = m;
    }
    return a;
}

EXPORT int emsan_afl_cmplog(struct emsan_afl *a) { return a->cmp != NULL; }

EXPORT int emsan_afl_has_afl(struct emsan_afl *a) { return a->has_afl; }
EXPORT uint64_t emsan_afl_cached(struct emsan_afl *a) { return a->cached; }
EXPORT uint8_t *emsan_afl_map(struct emsan_afl *a) { return a->map; }

EXPORT int emsan_afl_cover(struct emsan_afl *a, int block_type, uint64_t begin, uint64_t end)
{
    size_t hh;
    return ((engine_hook_add_fn)emsan_uc.uc_hook_add)(a->uc, &hh, block_type, (void *)block_cb, a, begin, end);
}

EXPORT int emsan_afl_compcov(struct emsan_afl *a, int opcode_type, int op, int flags, uint64_t begin, uint64_t end)
{
    size_t hh;
    return ((engine_hook_add_fn)emsan_uc.uc_hook_add)(a->uc, &hh, opcode_type, (void *)cmp_cb, a, begin, end, op, flags);
}

EXPORT int emsan_afl_share_cache(struct emsan_afl *a, int edge_type)
{
    size_t hh;
    return ((engine_hook_add_fn)emsan_uc.uc_hook_add)(a->uc, &hh, edge_type, (void *)new_block_cb, a, 1, 0);
}

/* The child's input when AFL++ passes test cases in shared memory; NULL otherwise. */
EXPORT const uint8_t *emsan_afl_input(struct emsan_afl *a, uint32_t *len)
{
    if (a->shm_input == NULL)
        return NULL;
    *len = a->shm_input[0];
    return (const uint8_t *)(a->shm_input + 1);
}

/* Serve the children's translation requests until the child finishes an iteration ('D': 1)
 * or dies (0). */
static int serve_child(struct emsan_afl *a, int from_child)
{
    char tag;
    uint64_t pc;
    for (;;) {
        ssize_t n = read(from_child, &tag, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1)
            return 0;
        if (tag == 'D')
            return 1;
        if (tag != 'T' || read(from_child, &pc, 8) != 8)
            return 0;
        if (((engine_ctl_fn)emsan_uc.uc_ctl)(a->uc, (int)a->ctl_request_cache, pc, NULL) == 0)
            a->cached++;
    }
}

static int write_u32(int fd, uint32_t v) { return write(fd, &v, 4) == 4; }

/* Become AFL++'s fork server. Returns 0 when no AFL++ is listening (run once, as a plain
 * program), 1 in each child (run the input), 2 in the server once AFL++ has gone, -1 on error. */
EXPORT int emsan_afl_serve(struct emsan_afl *a)
{
    uint32_t hello = FS_OPT_ENABLED | FS_OPT_NEWCMPLOG | (a->shm_input ? FS_OPT_SHDMEM_FUZZ : 0), reply;
    if (!a->has_afl || !write_u32(FORKSRV_FD + 1, hello))
        return 0;
    /* afl-fuzz confirms shared-memory test cases with (FS_OPT_ENABLED | FS_OPT_SHDMEM_FUZZ) */
    if (a->shm_input && (read(FORKSRV_FD, &reply, 4) != 4 || !(reply & FS_OPT_SHDMEM_FUZZ)))
        return -1;
    pid_t child = -1;
    int alive = 0, to_child = -1, from_child = -1;
    for (;;) {
        uint32_t was_killed;
        int status = 0;
        if (read(FORKSRV_FD, &was_killed, 4) != 4)
            return 2;
        if (alive && was_killed) {           /* AFL++ killed the stopped child meanwhile */
            waitpid(child, &status, 0);
            alive = 0;
        }
        if (!alive) {
            int up[2], down[2];
            if (to_child >= 0) { close(to_child); close(from_child); }
            if (pipe(up) || pipe(down))
                return -1;
            child = fork();
            if (child < 0)
                return -1;
            if (child == 0) {
                close(FORKSRV_FD);
                close(FORKSRV_FD + 1);
                close(up[0]);
                close(down[1]);
                a->to_server = up[1];
                a->from_server = down[0];
                a->in_child = 1;
                a->prev = 0;
                return 1;
            }
            close(up[1]);
            close(down[0]);
            from_child = up[0];
            to_child = down[1];
        } else if (write(to_child, "G", 1) != 1) {
            return -1;
        }
        if (!write_u32(FORKSRV_FD + 1, (uint32_t)child))
            return 2;
        if (serve_child(a, from_child)) {
            alive = 1;                       /* persistent: waiting for the next input */
            status = 0;
        } else {
            alive = 0;
            if (waitpid(child, &status, 0) < 0)
                return -1;
        }
        if (!write_u32(FORKSRV_FD + 1, (uint32_t)status))
            return 2;
    }
}

/* Persistent mode, in the child: tell the server this input is done and wait for the next one.
 * 1: the next input is in place; 0: no server (run once). */
EXPORT int emsan_afl_next(struct emsan_afl *a)
{
    char go;
    if (!a->in_child || a->to_server < 0)
        return 0;
    if (write(a->to_server, "D", 1) != 1)
        return 0;
    for (;;) {
        ssize_t n = read(a->from_server, &go, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1)
            return 0;
        a->prev = 0;
        return 1;
    }
}
