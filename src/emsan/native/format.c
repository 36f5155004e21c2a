/* The variable arguments of a guest call (the x86-64 and AArch64 procedure-call standards:
 * registers, then the stack; or a va_list) and the printf formats that describe them: what a
 * printf reads (its %s strings) and writes (%n, and how long its output is), and where a scanf
 * may store. The format is parsed once per call, here; the guest's own function then runs. */
#include <stdio.h>
#include "format.h"

#define NO_LIMIT (~0ULL >> 1)

/* ---- arguments --------------------------------------------------------------------------------- */

void args_direct(struct args *a, rt_t *rt, int fixed)
{
    memset(a, 0, sizeof *a);
    a->rt = rt;
    a->gp = fixed;
    uint64_t sp = reg(rt, EMSAN_REG_SP);
    a->stack = rt->arm64 ? sp : sp + 8;          /* x86-64: above the return address */
}

/* x86-64: {gp_offset, fp_offset, overflow_arg_area, reg_save_area}; AArch64: {__stack,
 * __gr_top, __vr_top, __gr_offs, __vr_offs}. Read, never written: the guest's list stays. */
void args_va(struct args *a, rt_t *rt, uint64_t va)
{
    memset(a, 0, sizeof *a);
    a->rt = rt;
    a->va = 1;
    uint8_t b[32];
    if (mem_get(rt->uc, guest_addr(rt, va), b, 32)) { a->bad = 1; return; }
    if (rt->arm64) {
        memcpy(&a->stack, b, 8);
        memcpy(&a->gr_top, b + 8, 8);
        memcpy(&a->vr_top, b + 16, 8);
        memcpy(&a->gr_offs, b + 24, 4);
        memcpy(&a->vr_offs, b + 28, 4);
    } else {
        uint32_t gp, fp;
        memcpy(&gp, b, 4);
        memcpy(&fp, b + 4, 4);
        a->gr_offs = (int32_t)gp;
        a->vr_offs = (int32_t)fp;
        memcpy(&a->stack, b + 8, 8);
        memcpy(&a->gr_top, b + 16, 8);            /* reg_save_area */
    }
}

static void read_at(struct args *a, uint64_t addr, void *out, size_t n)
{
    if (mem_get(a->rt->uc, guest_addr(a->rt, addr), out, n)) a->bad = 1;
}

static void from_stack(struct args *a, void *out, size_t n)
{
    if (n == 16) a->stack = round_up(a->stack, 16);
    read_at(a, a->stack, out, n);
    a->stack += n < 8 ? 8 : n;
}

static uint64_t arg_int(struct args *a)
{
    uint64_t v = 0;
    rt_t *rt = a->rt;
    if (!a->va) {
        if (a->gp < (rt->arm64 ? 8 : 6)) return reg_get(rt->uc, int_arg_reg(rt, a->gp++));
        from_stack(a, &v, 8);
    } else if (rt->arm64 ? a->gr_offs < 0 : a->gr_offs < 48) {
        read_at(a, (rt->arm64 ? a->gr_top : a->gr_top) + (uint64_t)(int64_t)a->gr_offs, &v, 8);
        a->gr_offs += 8;
    } else {
        from_stack(a, &v, 8);
    }
    return v;
}

/* A floating-point argument: 8 bytes (a double) or 16 (long double: x86-64's 80-bit in 16
 * bytes on the stack, AArch64's binary128 in a vector register). */
static void arg_float(struct args *a, void *out, size_t n)
{
    rt_t *rt = a->rt;
    memset(out, 0, n);
    if (n == 16 && !rt->arm64) {                   /* x86-64 long double: memory only */
        from_stack(a, out, 16);
        return;
    }
    if (!a->va) {
        if (a->fp < 8) {
            uint8_t q[16];
            reg_get_wide(rt->uc, rt->fpargs[a->fp++], q);
            memcpy(out, q, n);
        } else {
            from_stack(a, out, n);
        }
    } else if (rt->arm64 ? a->vr_offs < 0 : a->vr_offs < 176) {
        uint64_t base = rt->arm64 ? a->vr_top : a->gr_top;
        read_at(a, base + (uint64_t)(int64_t)a->vr_offs, out, n);
        a->vr_offs += 16;
    } else {
        from_stack(a, out, n);
    }
}

/* ---- guest strings ------------------------------------------------------------------------------ */

/* Elements before the first 0 in [s, s + max elements), max if none; -1 if unreadable. */
int64_t guest_len(rt_t *rt, uint64_t s, uint64_t max, int elem)
{
    uint8_t buf[256];
    uint64_t i = 0;
    while (i < max) {
        uint64_t at = s + i * (uint64_t)elem;
        size_t bytes = sizeof buf - (at & (sizeof buf - 1));
        bytes -= bytes % (size_t)elem;
        if (!bytes) bytes = (size_t)elem;
        if (bytes / (size_t)elem > max - i) bytes = (size_t)(max - i) * (size_t)elem;
        if (mem_get(rt->uc, guest_addr(rt, at), buf, bytes)) return -1;
        if (elem == 1) {
            const uint8_t *z = memchr(buf, 0, bytes);
            if (z) return (int64_t)(i + (uint64_t)(z - buf));
            i += bytes;
            continue;
        }
        for (size_t j = 0; j < bytes; j += (size_t)elem) {
            uint32_t v = buf[j];
            if (elem == 4) memcpy(&v, buf + j, 4);
            if (!v) return (int64_t)(i + j / (size_t)elem);
        }
        i += bytes / (size_t)elem;
    }
    return (int64_t)max;
}

/* Are the first n wide characters of s all ASCII (converted byte for byte in any locale)? */
static int wide_ascii(rt_t *rt, uint64_t s, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint32_t v;
        if (mem_get(rt->uc, guest_addr(rt, s + 4 * i), &v, 4) || v >= 0x80) return 0;
    }
    return 1;
}

/* ---- directives ---------------------------------------------------------------------------------- */

enum lmod { L_NONE, L_HH, L_H, L_L, L_LL, L_BIG_L, L_J, L_Z, L_T };
enum atype { A_NONE, A_INT, A_PTR, A_DOUBLE, A_LDOUBLE };

struct directive {
    char conv;
    enum lmod lmod;
    int left, plus, space, alt, zero, locale;      /* flags ('\'' and 'I' are the locale's) */
    int64_t width, prec;                           /* -1: none */
    int suppress, alloc;                           /* scanf: '*', 'm' */
    int width_arg, prec_arg, arg;                  /* argument numbers (1-based), 0: none */
};

static int parse_number(const char **p, int64_t *out)
{
    int64_t v = 0;
    if (**p < '0' || **p > '9') return 0;
    while (**p >= '0' && **p <= '9') {
        if (v < (1LL << 40)) v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return 1;
}

/* "n$" after a number at *p: its argument number */
static int positional(const char **p, int *out)
{
    const char *q = *p;
    int64_t n;
    if (parse_number(&q, &n) && *q == '$' && n > 0 && n < MAX_ARGS) {
        *out = (int)n;
        *p = q + 1;
        return 1;
    }
    return 0;
}

static void parse_lmod(const char **p, struct directive *d)
{
    switch (**p) {
    case 'h': (*p)++; d->lmod = **p == 'h' ? ((*p)++, L_HH) : L_H; break;
    case 'l': (*p)++; d->lmod = **p == 'l' ? ((*p)++, L_LL) : L_L; break;
    case 'q': case 'L': (*p)++; d->lmod = (*p)[-1] == 'q' ? L_LL : L_BIG_L; break;
    case 'j': (*p)++; d->lmod = L_J; break;
    case 'z': case 'Z': (*p)++; d->lmod = L_Z; break;
    case 't': (*p)++; d->lmod = L_T; break;
    default: break;
    }
}

/* One printf directive after its '%'; 0 at a conversion glibc does not know (or one a program
 * registered itself): the rest of the format is then not understood. */
static int parse_printf(const char **p, struct directive *d, int *next_arg, int *positional_used)
{
    memset(d, 0, sizeof *d);
    d->width = d->prec = -1;
    int pos;
    if (positional(p, &pos)) { d->arg = pos; *positional_used = 1; }
    for (;; (*p)++) {
        char c = **p;
        if (c == '-') d->left = 1;
        else if (c == '+') d->plus = 1;
        else if (c == ' ') d->space = 1;
        else if (c == '#') d->alt = 1;
        else if (c == '0') d->zero = 1;
        else if (c == '\'' || c == 'I') d->locale = 1;
        else break;
    }
    if (**p == '*') {
        (*p)++;
        if (!positional(p, &d->width_arg)) d->width_arg = (*next_arg)++;
    } else {
        parse_number(p, &d->width);
    }
    if (**p == '.') {
        (*p)++;
        if (**p == '*') {
            (*p)++;
            if (!positional(p, &d->prec_arg)) d->prec_arg = (*next_arg)++;
        } else {
            d->prec = 0;
            parse_number(p, &d->prec);
        }
    }
    parse_lmod(p, d);
    d->conv = *(*p)++;
    if (!strchr("diouxXeEfFgGaAcspnmCS%", d->conv) || !d->conv) return 0;
    if (d->conv != '%' && d->conv != 'm' && !d->arg) d->arg = (*next_arg)++;
    return 1;
}

static enum atype printf_type(const struct directive *d)
{
    switch (d->conv) {
    case 's': case 'p': case 'n': case 'S': return A_PTR;
    case 'e': case 'E': case 'f': case 'F': case 'g': case 'G': case 'a': case 'A':
        return d->lmod == L_BIG_L ? A_LDOUBLE : A_DOUBLE;
    case '%': case 'm': return A_NONE;
    default: return A_INT;
    }
}

/* Bytes %n stores. */
static uint64_t int_size(enum lmod m)
{
    switch (m) {
    case L_HH: return 1;
    case L_H: return 2;
    case L_NONE: return 4;
    default: return 8;
    }
}

struct argval { enum atype type; uint64_t i; uint8_t f[16]; };

/* Fetch every argument the directives use, in order of their numbers (positional ones may
 * come in any order in the format). 0 if an argument's type is unknown or memory unreadable. */
static int fetch(struct args *a, const struct directive *ds, int nd, int nargs, struct argval *vals, int scanf)
{
    for (int i = 1; i <= nargs; i++) vals[i].type = A_NONE;
    for (int i = 0; i < nd; i++) {
        const struct directive *d = &ds[i];
        if (d->width_arg) vals[d->width_arg].type = A_INT;
        if (d->prec_arg) vals[d->prec_arg].type = A_INT;
        if (d->arg) vals[d->arg].type = scanf ? A_PTR : printf_type(d);
    }
    for (int i = 1; i <= nargs; i++) {
        switch (vals[i].type) {
        case A_NONE: return 0;                              /* a gap: glibc refuses the format */
        case A_INT: case A_PTR: vals[i].i = arg_int(a); break;
        case A_DOUBLE: arg_float(a, vals[i].f, 8); break;
        case A_LDOUBLE: arg_float(a, vals[i].f, 16); break;
        }
        if (a->bad) return 0;
    }
    return 1;
}

/* How many bytes one converted number takes: the host C library formats the value with the
 * directive (glibc both, same digits), asked only for the length. -1 if not known. */
static int64_t number_length(const struct directive *d, const struct argval *v, int64_t width, int64_t prec, int arm64)
{
    char spec[32], *s = spec;
    *s++ = '%';
    if (d->left) *s++ = '-';
    if (d->plus) *s++ = '+';
    if (d->space) *s++ = ' ';
    if (d->alt) *s++ = '#';
    if (d->zero) *s++ = '0';
    *s++ = '*';
    *s++ = '.';
    *s++ = '*';
    int w = (int)width, pr = prec < 0 ? -1 : (int)prec;
    switch (d->conv) {
    case 'e': case 'E': case 'f': case 'F': case 'g': case 'G': case 'a': case 'A':
        if (d->lmod == L_BIG_L) {
            if (arm64) return -1;                   /* binary128: the host has no printf for it */
            long double x;
            memcpy(&x, v->f, sizeof x < 16 ? sizeof x : 16);
            *s++ = 'L';
            *s++ = d->conv;
            *s = 0;
            return snprintf(NULL, 0, spec, w, pr, x);
        } else {
            double x;
            memcpy(&x, v->f, 8);
            *s++ = d->conv;
            *s = 0;
            return snprintf(NULL, 0, spec, w, pr, x);
        }
    case 'p':
        *s++ = 'p';
        *s = 0;
        return snprintf(NULL, 0, spec, w, pr, (void *)(uintptr_t)v->i);
    case 'c':
        return width > 1 ? width : 1;
    default: {
        int is_signed = d->conv == 'd' || d->conv == 'i';
        uint64_t x = v->i;
        switch (d->lmod) {                           /* what the callee's va_arg reads */
        case L_HH: x = is_signed ? (uint64_t)(int64_t)(int8_t)x : (uint8_t)x; break;
        case L_H: x = is_signed ? (uint64_t)(int64_t)(int16_t)x : (uint16_t)x; break;
        case L_NONE: x = is_signed ? (uint64_t)(int64_t)(int32_t)x : (uint32_t)x; break;
        default: break;
        }
        *s++ = 'l';
        *s++ = 'l';
        *s++ = d->conv;
        *s = 0;
        return is_signed ? snprintf(NULL, 0, spec, w, pr, (long long)x) : snprintf(NULL, 0, spec, w, pr, (unsigned long long)x);
    }
    }
}

/* The format at fmt (checked by the caller, at most FORMAT_MAX bytes), in buf when it fits. */
static char *read_format(rt_t *rt, uint64_t fmt, int64_t len, char *buf, size_t cap)
{
    if (len < 0 || len > FORMAT_MAX) return NULL;
    char *f = (size_t)len < cap ? buf : malloc((size_t)len + 1);
    if (f && len && mem_get(rt->uc, guest_addr(rt, fmt), f, (size_t)len)) { if (f != buf) free(f); return NULL; }
    if (f) f[len] = 0;
    return f;
}

int64_t printf_walk(rt_t *rt, uint64_t fmt, int64_t fmt_len, struct args *a, const struct visit *v, int measure)
{
    char small[512];
    char *f = read_format(rt, fmt, fmt_len, small, sizeof small);
    if (!f) return -1;
    struct directive ds[MAX_DIRECTIVES];
    struct argval vals[MAX_ARGS + 1];
    ds[0].conv = 0;
    int nd = 0, next = 1, pos_used = 0, understood = 1;
    int64_t total = 0;
    for (const char *p = f; *p;) {
        if (*p != '%') { total++; p++; continue; }
        p++;
        if (nd == MAX_DIRECTIVES || !parse_printf(&p, &ds[nd], &next, &pos_used)) { understood = 0; break; }
        if (ds[nd].conv == '%') { total++; continue; }
        nd++;
    }
    int nargs = 0;
    for (int i = 0; i < nd; i++) {
        const struct directive *d = &ds[i];
        int m = d->arg > d->width_arg ? d->arg : d->width_arg;
        if (d->prec_arg > m) m = d->prec_arg;
        if (m > nargs) nargs = m;
    }
    if (!understood || !measure) total = -1;
    if (nargs >= MAX_ARGS || !fetch(a, ds, nd, nargs, vals, 0)) nd = 0, total = -1;
    for (int i = 0; i < nd; i++) {
        const struct directive *d = &ds[i];
        int64_t width = d->width_arg ? (int64_t)(int32_t)vals[d->width_arg].i : d->width;
        int64_t prec = d->prec_arg ? (int64_t)(int32_t)vals[d->prec_arg].i : d->prec;
        if (width < 0) width = d->width_arg ? -width : 0;     /* a negative '*' width: left-justified */
        if (prec < -1 || (d->prec_arg && prec < 0)) prec = -1;
        int64_t len = -1;
        uint64_t ptr = d->arg ? vals[d->arg].i : 0;
        int wide = d->conv == 'S' || ((d->conv == 's' || d->conv == 'c') && d->lmod == L_L);
        if ((d->conv == 's' || d->conv == 'S') && !ptr) {
            len = prec < 0 || prec >= 6 ? 6 : 0;             /* glibc prints "(null)" */
        } else if (d->conv == 's' && !wide) {
            int64_t n = guest_len(rt, ptr, prec >= 0 ? (uint64_t)prec : NO_LIMIT, 1);
            if (n >= 0 && v->read(v->ctx, ptr, prec >= 0 && n == prec ? (uint64_t)n : (uint64_t)n + 1)) break;
            len = n;
        } else if (wide && d->conv != 'c') {
            /* the precision counts output bytes, one per ASCII character */
            int64_t n = guest_len(rt, ptr, prec >= 0 ? (uint64_t)prec : NO_LIMIT, 4);
            if (n >= 0 && v->read(v->ctx, ptr, 4 * (prec >= 0 && n == prec ? (uint64_t)n : (uint64_t)n + 1))) break;
            len = n >= 0 && wide_ascii(rt, ptr, (uint64_t)n) ? n : -1;
        } else if (d->conv == 'n') {
            if (v->write(v->ctx, ptr, int_size(d->lmod))) break;
            len = 0;
        } else if (!measure || d->conv == 'm') {
            len = -1;                                        /* %m: strerror(errno), the guest's errno */
        } else if (d->conv == 'C' || (d->conv == 'c' && wide)) {
            len = ptr < 0x80 ? 1 : -1;
        } else if (width > (1 << 20) || prec > (1 << 20)) {
            len = -1;                                        /* not worth formatting here */
        } else {
            len = number_length(d, &vals[d->arg], 0, prec, rt->arm64);
        }
        if (d->locale) len = -1;                             /* grouping and digits: the locale's */
        if (len >= 0 && len < width) len = width;
        total = len < 0 || total < 0 ? -1 : total + len;
    }
    if (f != small) free(f);
    return total;
}

/* ---- scanf -------------------------------------------------------------------------------------- */

/* One scanf directive after its '%'; 0 at something glibc would not accept. */
static int parse_scanf(const char **p, struct directive *d, int *next_arg)
{
    memset(d, 0, sizeof *d);
    d->width = -1;
    int pos;
    if (positional(p, &pos)) d->arg = pos;
    if (**p == '*') { d->suppress = 1; (*p)++; }
    parse_number(p, &d->width);
    if (**p == 'm') { d->alloc = 1; (*p)++; }
    parse_lmod(p, d);
    d->conv = *(*p)++;
    if (d->conv == '[') {
        if (**p == '^') (*p)++;
        if (**p == ']') (*p)++;
        while (**p && **p != ']') (*p)++;
        if (!**p) return 0;
        (*p)++;
    } else if (!d->conv || !strchr("diouxXaAeEfFgGsScCpn%", d->conv)) {
        return 0;
    }
    if (d->conv != '%' && !d->suppress && !d->arg) d->arg = (*next_arg)++;
    return 1;
}

int scanf_walk(rt_t *rt, uint64_t fmt, int64_t fmt_len, struct args *a, struct dest *out, int max)
{
    char small[512];
    char *f = read_format(rt, fmt, fmt_len, small, sizeof small);
    if (!f) return -1;
    struct directive ds[MAX_DIRECTIVES];
    struct argval vals[MAX_ARGS + 1];
    int nd = 0, next = 1, nargs = 0, n = -1;
    for (const char *p = f; *p && nd < MAX_DIRECTIVES;) {
        if (*p++ != '%') continue;
        if (!parse_scanf(&p, &ds[nd], &next)) break;
        if (ds[nd].conv == '%' || ds[nd].suppress) continue;
        if (ds[nd].arg > nargs) nargs = ds[nd].arg;
        nd++;
    }
    if (nd <= max && nargs < MAX_ARGS && fetch(a, ds, nd, nargs, vals, 1)) {
        for (n = 0; n < nd; n++) {
            const struct directive *d = &ds[n];
            struct dest *o = &out[n];
            o->ptr = vals[d->arg].i;
            o->elem = (d->lmod == L_L && strchr("sc[", d->conv)) || d->conv == 'S' || d->conv == 'C' ? 4 : 1;
            o->kind = DEST_FIXED;
            if (d->alloc) {
                o->max = 8;                                  /* %ms: it stores a pointer */
            } else if (d->conv == 'c' || d->conv == 'C') {
                o->max = (uint64_t)(d->width > 0 ? d->width : 1) * o->elem;
            } else if (strchr("sS[", d->conv)) {
                o->kind = DEST_STRING;                       /* at most width characters and a NUL */
                o->max = d->width > 0 ? ((uint64_t)d->width + 1) * o->elem : ~0ULL;
            } else if (strchr("aAeEfFgG", d->conv)) {
                o->max = d->lmod == L_BIG_L ? 16 : d->lmod == L_L ? 8 : 4;
            } else {
                o->kind = d->conv == 'n' ? DEST_COUNT : DEST_FIXED;
                o->max = d->conv == 'p' || d->lmod == L_BIG_L ? 8 : int_size(d->lmod);
            }
        }
    }
    if (f != small) free(f);
    return n;
}
