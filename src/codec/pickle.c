/* pickle.c — Python pickle for plain data: an iterative, bounded decoder for
 * protocols 0-5 that never imports or calls, and a protocol 4/5 encoder. */
#include <assert.h>
#include <ctype.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <stdatomic.h>
#include <sys/random.h>
#include <unistd.h>

#include "codec_int.h"

/* ------------------------------------------------------------ whitelist */

enum { G_EXC = 1, G_SET, G_BYTES, G_BYTEARRAY, G_ENCODE };

static const char *const known_exc[] = {
    "BaseException", "Exception", "Warning", "BaseExceptionGroup", "ExceptionGroup",
    "KeyboardInterrupt", "SystemExit", "GeneratorExit", "StopIteration", "StopAsyncIteration", NULL,
};

static bool ident(const char *s)
{
    if (!*s || isdigit((unsigned char)*s))
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return false;
    return true;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a > b && strcmp(s + a - b, suf) == 0;
}

/* A name we accept as a builtin exception type (decoding never resolves it). */
static bool exc_name(const char *name)
{
    if (!ident(name) || strlen(name) > 64)
        return false;
    if (ends_with(name, "Error") || ends_with(name, "Warning"))
        return true;
    for (size_t i = 0; known_exc[i]; i++)
        if (strcmp(name, known_exc[i]) == 0)
            return true;
    return false;
}

/* The fixed (module, name) pairs a plain-data pickle may reference; 0 if refused. */
static int global_kind(const char *mod, const char *name)
{
    bool builtins = strcmp(mod, "builtins") == 0 || strcmp(mod, "__builtin__") == 0;
    if ((builtins || strcmp(mod, "exceptions") == 0) && exc_name(name))
        return G_EXC;
    if (builtins && (strcmp(name, "set") == 0 || strcmp(name, "frozenset") == 0))
        return G_SET;
    if (builtins && strcmp(name, "bytes") == 0)
        return G_BYTES;
    if (builtins && strcmp(name, "bytearray") == 0)
        return G_BYTEARRAY;
    if (strcmp(mod, "_codecs") == 0 && strcmp(name, "encode") == 0)
        return G_ENCODE;
    return 0;
}

/* ------------------------------------------------------------ decoder state */

typedef struct {
    uint32_t key;
    bool used;
    mproc_value *v; /* borrowed: the value lives on the stack, in a tree or the graveyard */
} memo_slot;

typedef struct {
    const uint8_t *p, *end;
    mproc_decode_limits lim;
    size_t items, bytes;
    size_t copy_left; /* nodes GET/DUP may still copy (see copy_ref) */
    mproc_value **st; /* the VM stack; each entry owned */
    size_t n, cap;
    size_t *marks;
    size_t nmarks, capmarks;
    memo_slot *memo;
    size_t nmemo, capmemo;
    /* Values dropped while the memo may still point at them: freed at the end. */
    mproc_value **grave;
    size_t ngrave, capgrave;
} vm;

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    if (c > SIZE_MAX / elem)
        return MPROC_ENOMEM;
    void *p = realloc(*arr, c * elem);
    if (!p)
        return MPROC_ENOMEM;
    *arr = p;
    *cap = c;
    return 0;
}

/* Make room to bury k more values, so that burying itself cannot fail. */
static int grave_reserve(vm *m, size_t k)
{
    return grow((void **)&m->grave, &m->capgrave, m->ngrave + k, sizeof *m->grave);
}

static void bury(vm *m, mproc_value *v)
{
    if (!v)
        return;
    assert(m->ngrave < m->capgrave);
    m->grave[m->ngrave++] = v;
}

static int count_item(vm *m)
{
    if (m->items >= m->lim.max_items)
        return mproc__fail(MPROC_EMSGSIZE, "pickle: more than %zu items", m->lim.max_items);
    m->items++;
    return 0;
}

/* Push a freshly made value (NULL = out of memory), counting it. */
static int push(vm *m, mproc_value *v)
{
    if (!v)
        return MPROC_ENOMEM;
    int rc = count_item(m);
    if (!rc)
        rc = grow((void **)&m->st, &m->cap, m->n + 1, sizeof *m->st);
    if (rc) {
        mproc_value_free(v);
        return rc;
    }
    m->st[m->n++] = v;
    return 0;
}

/* Values above the innermost MARK: the only ones an opcode may pop (as in Python). */
static size_t avail(const vm *m) { return m->n - (m->nmarks ? m->marks[m->nmarks - 1] : 0); }

static int underflow(const char *op)
{
    return mproc__fail(MPROC_EPROTO, "pickle: %s on an empty stack", op);
}

/* The stack position of the innermost MARK, popping it. */
static int pop_mark(vm *m, const char *op, size_t *at)
{
    *at = 0;
    if (!m->nmarks)
        return mproc__fail(MPROC_EPROTO, "pickle: %s without MARK", op);
    *at = m->marks[--m->nmarks];
    return 0;
}

static int need(vm *m, size_t n)
{
    if ((size_t)(m->end - m->p) < n)
        return mproc__fail(MPROC_EPROTO, "pickle: truncated input");
    return 0;
}

static uint64_t le(const uint8_t *p, size_t n)
{
    uint64_t x = 0;
    for (size_t i = n; i-- > 0;)
        x = (x << 8) | p[i];
    return x;
}

static int arg(vm *m, size_t n, uint64_t *x)
{
    int rc = need(m, n);
    if (rc)
        return rc;
    *x = le(m->p, n);
    m->p += n;
    return 0;
}

/* A text argument: the bytes up to '\n' (excluded), which is consumed. */
static int line(vm *m, const char **s, size_t *n)
{
    *s = NULL;
    *n = 0;
    const uint8_t *nl = memchr(m->p, '\n', (size_t)(m->end - m->p));
    if (!nl)
        return mproc__fail(MPROC_EPROTO, "pickle: truncated text argument");
    *s = (const char *)m->p;
    *n = (size_t)(nl - m->p);
    m->p = nl + 1;
    return 0;
}

static int add_bytes(vm *m, uint64_t n)
{
    if (n > m->lim.max_bytes - m->bytes)
        return mproc__fail(MPROC_EMSGSIZE, "pickle: more than %zu bytes of str/bytes",
                           m->lim.max_bytes);
    m->bytes += (size_t)n;
    return 0;
}

/* Binary str/bytes of n bytes at the cursor. ascii: Python 2 str, decoded as
 * ASCII (pickle.loads' default encoding). */
static int binblob(vm *m, uint64_t n, mproc_vtype t, bool ascii)
{
    if (n > (uint64_t)(m->end - m->p))
        return mproc__fail(MPROC_EPROTO, "pickle: string of %llu bytes is truncated",
                           (unsigned long long)n);
    int rc = add_bytes(m, n);
    if (rc)
        return rc;
    const uint8_t *s = m->p;
    m->p += n;
    if (ascii)
        for (size_t i = 0; i < n; i++)
            if (s[i] >= 0x80)
                return mproc__fail(MPROC_EPROTO, "pickle: non-ASCII byte in a Python 2 str");
    if (t == MPROC_V_STR && !mproc__utf8_valid(s, n))
        return mproc__fail(MPROC_EPROTO, "pickle: str is not valid UTF-8 (lone surrogate?)");
    return push(m, t == MPROC_V_STR ? mproc_value_strn((const char *)s, n)
                                    : mproc_value_bytes(s, n));
}

/* A value built in a mproc_buf: push it as STR/BYTES (takes the buffer). */
static int push_built(vm *m, mproc_buf *b, mproc_vtype t)
{
    int rc = add_bytes(m, b->len);
    if (!rc)
        rc = mproc_buf_append(b, "", 1);
    if (rc) {
        mproc__buf_free(b);
        return rc;
    }
    return push(m, mproc__value_take_str(t, (char *)b->data, b->len - 1));
}

static int put_utf8(mproc_buf *b, uint32_t cp)
{
    uint8_t o[4];
    size_t k;
    if (cp < 0x80)
        o[0] = (uint8_t)cp, k = 1;
    else if (cp < 0x800)
        o[0] = (uint8_t)(0xc0 | cp >> 6), o[1] = (uint8_t)(0x80 | (cp & 0x3f)), k = 2;
    else if (cp < 0x10000)
        o[0] = (uint8_t)(0xe0 | cp >> 12), o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f)),
        o[2] = (uint8_t)(0x80 | (cp & 0x3f)), k = 3;
    else
        o[0] = (uint8_t)(0xf0 | cp >> 18), o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f)),
        o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f)), o[3] = (uint8_t)(0x80 | (cp & 0x3f)), k = 4;
    return mproc_buf_append(b, o, k);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* UNICODE: raw-unicode-escape, exactly as CPython decodes it. */
static int op_unicode(vm *m)
{
    const char *s;
    size_t n;
    int rc = line(m, &s, &n);
    if (rc)
        return rc;
    mproc_buf b = {0};
    for (size_t i = 0; i < n && !rc;) {
        uint8_t c = (uint8_t)s[i++];
        if (c != '\\' || i == n || (s[i] != 'u' && s[i] != 'U')) {
            rc = put_utf8(&b, c);
            if (c == '\\' && i < n && !rc)
                rc = put_utf8(&b, (uint8_t)s[i++]);
            continue;
        }
        size_t k = s[i++] == 'u' ? 4 : 8;
        uint32_t cp = 0;
        for (size_t j = 0; j < k; j++) {
            int h = i < n ? hexval(s[i]) : -1;
            if (h < 0) {
                rc = mproc__fail(MPROC_EPROTO, "pickle: truncated \\uXXXX escape in UNICODE");
                break;
            }
            cp = cp << 4 | (uint32_t)h;
            i++;
        }
        if (rc)
            break;
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            rc = mproc__fail(MPROC_EPROTO, "pickle: UNICODE escape U+%X is not representable",
                             cp);
        else
            rc = put_utf8(&b, cp);
    }
    if (rc) {
        mproc__buf_free(&b);
        return rc;
    }
    return push_built(m, &b, MPROC_V_STR);
}

/* STRING: a quoted Python 2 str with escapes (codecs.escape_decode), as ASCII. */
static int op_string(vm *m)
{
    const char *s;
    size_t n;
    int rc = line(m, &s, &n);
    if (rc)
        return rc;
    if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"'))
        return mproc__fail(MPROC_EPROTO, "pickle: the STRING opcode argument must be quoted");
    s++;
    n -= 2;
    mproc_buf b = {0};
    for (size_t i = 0; i < n && !rc;) {
        uint8_t c = (uint8_t)s[i++], o = c;
        if (c == '\\') {
            if (i == n) {
                rc = mproc__fail(MPROC_EPROTO, "pickle: trailing \\ in STRING");
                break;
            }
            c = (uint8_t)s[i++];
            switch (c) {
            case '\n': continue;
            case '\\': o = '\\'; break;
            case '\'': o = '\''; break;
            case '"': o = '"'; break;
            case 'b': o = '\b'; break;
            case 'f': o = '\f'; break;
            case 't': o = '\t'; break;
            case 'n': o = '\n'; break;
            case 'r': o = '\r'; break;
            case 'v': o = '\v'; break;
            case 'a': o = '\a'; break;
            case 'x': {
                int h1 = i < n ? hexval(s[i]) : -1, h2 = i + 1 < n ? hexval(s[i + 1]) : -1;
                if (h1 < 0 || h2 < 0) {
                    rc = mproc__fail(MPROC_EPROTO, "pickle: invalid \\x escape in STRING");
                    continue;
                }
                o = (uint8_t)(h1 << 4 | h2);
                i += 2;
                break;
            }
            default:
                if (c >= '0' && c <= '7') {
                    unsigned v = c - '0';
                    for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++)
                        v = v * 8 + (unsigned)(s[i++] - '0');
                    o = (uint8_t)v;
                } else {
                    rc = mproc_buf_append(&b, "\\", 1);
                    o = c;
                }
            }
        }
        if (!rc && o >= 0x80)
            rc = mproc__fail(MPROC_EPROTO, "pickle: non-ASCII byte in a Python 2 str");
        if (!rc)
            rc = mproc_buf_append(&b, &o, 1);
    }
    if (rc) {
        mproc__buf_free(&b);
        return rc;
    }
    return push_built(m, &b, MPROC_V_STR);
}

/* Decimal integer text as int(x) reads it (no base prefixes or underscores). */
static int parse_int(const char *s, size_t n, int64_t *out)
{
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    bool neg = false;
    if (n && (*s == '-' || *s == '+'))
        neg = *s == '-', s++, n--;
    if (!n)
        return mproc__fail(MPROC_EPROTO, "pickle: empty integer");
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, x = 0;
    bool big = false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return mproc__fail(MPROC_EPROTO, "pickle: invalid integer text");
        unsigned dgt = (unsigned)(s[i] - '0');
        if (big || x > (lim - dgt) / 10)
            big = true;
        else
            x = x * 10 + dgt;
    }
    if (big)
        return mproc__fail(MPROC_ERANGE, "pickle: integer does not fit int64");
    *out = neg ? (int64_t)(0 - x) : (int64_t)x;
    return 0;
}

/* LONG1/LONG4 payload: little-endian two's complement of any length. */
static int push_long(vm *m, const uint8_t *p, uint64_t n)
{
    if (n == 0)
        return push(m, mproc_value_int(0));
    bool neg = p[n - 1] & 0x80;
    uint8_t ext = neg ? 0xff : 0x00;
    /* Bytes beyond the 8th must all be sign extension, and byte 7 must agree. */
    for (uint64_t i = 8; i < n; i++)
        if (p[i] != ext)
            return mproc__fail(MPROC_ERANGE, "pickle: integer does not fit int64");
    if (n > 8 && ((p[7] & 0x80) != 0) != neg)
        return mproc__fail(MPROC_ERANGE, "pickle: integer does not fit int64");
    uint64_t x = neg ? ~(uint64_t)0 : 0;
    size_t k = n < 8 ? (size_t)n : 8;
    for (size_t i = 0; i < k; i++) {
        x &= ~((uint64_t)0xff << (8 * i));
        x |= (uint64_t)p[i] << (8 * i);
    }
    return push(m, mproc_value_int((int64_t)x));
}

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static void c_locale_init(void) { c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0); }

static int op_float_text(vm *m)
{
    const char *s;
    size_t n;
    int rc = line(m, &s, &n);
    if (rc)
        return rc;
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (!n || n > 1000 || memchr(s, 'x', n) || memchr(s, 'X', n) || memchr(s, '(', n))
        return mproc__fail(MPROC_EPROTO, "pickle: invalid FLOAT text");
    char tmp[1001];
    memcpy(tmp, s, n);
    tmp[n] = 0;
    pthread_once(&c_locale_once, c_locale_init);
    if (!c_locale)
        return MPROC_ENOMEM;
    char *e;
    double d = strtod_l(tmp, &e, c_locale);
    if (e != tmp + n)
        return mproc__fail(MPROC_EPROTO, "pickle: invalid FLOAT text");
    return push(m, mproc_value_float(d));
}

/* ------------------------------------------------------------ memo */

/* Memo keys come from the peer, so the slot must not be predictable: a fixed
 * multiplicative hash lets keys that share their low bits pile into one probe
 * chain (quadratic decoding). Mix the key with a per-process random seed. */
static uint32_t memo_seed(void)
{
    static _Atomic uint32_t seed;
    uint32_t s = atomic_load_explicit(&seed, memory_order_relaxed);
    if (!s) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, GRND_NONBLOCK) != sizeof r)
            r = (uint32_t)(mproc_monotonic() * 1e9) ^ (uint32_t)getpid();
        s = r | 1u;
        atomic_store_explicit(&seed, s, memory_order_relaxed);
    }
    return s;
}

static size_t memo_slot_of(uint32_t key, size_t cap)
{
    uint32_t h = key ^ memo_seed(); /* murmur3's finaliser: every bit affects the low bits */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h & (cap - 1);
}

static memo_slot *memo_find(vm *m, uint32_t key, bool insert)
{
    if (insert && (m->nmemo + 1) * 2 > m->capmemo) {
        size_t cap = m->capmemo ? m->capmemo * 2 : 64;
        memo_slot *t = calloc(cap, sizeof *t);
        if (!t)
            return NULL;
        for (size_t i = 0; i < m->capmemo; i++) {
            if (!m->memo[i].used)
                continue;
            size_t s = memo_slot_of(m->memo[i].key, cap);
            while (t[s].used)
                s = (s + 1) & (cap - 1);
            t[s] = m->memo[i];
        }
        free(m->memo);
        m->memo = t;
        m->capmemo = cap;
    }
    if (!m->capmemo)
        return NULL;
    size_t s = memo_slot_of(key, m->capmemo);
    for (; m->memo[s].used; s = (s + 1) & (m->capmemo - 1))
        if (m->memo[s].key == key)
            return &m->memo[s];
    if (!insert)
        return NULL;
    m->memo[s].used = true;
    m->memo[s].key = key;
    m->nmemo++;
    return &m->memo[s];
}

static int memo_put(vm *m, uint64_t key)
{
    if (!avail(m))
        return underflow("PUT");
    if (key > UINT32_MAX)
        return mproc__fail(MPROC_EPROTO, "pickle: memo key out of range");
    if (!memo_find(m, (uint32_t)key, false)) { /* a new entry costs like an item */
        int rc = count_item(m);
        if (rc)
            return rc;
    }
    memo_slot *s = memo_find(m, (uint32_t)key, true);
    if (!s)
        return MPROC_ENOMEM;
    s->v = m->st[m->n - 1];
    return 0;
}

/* Push a copy of v for GET or DUP. Copied nodes count against max_items and
 * against copy_left (COPY_FACTOR per input byte), so a small pickle of nested
 * references cannot expand into a huge tree even under generous limits. */
#define COPY_FACTOR 256
#define COPY_SLACK 65536

static int copy_ref(vm *m, const mproc_value *v)
{
    size_t room = m->lim.max_items - m->items;
    bool by_copies = m->copy_left < room;
    size_t budget = by_copies ? m->copy_left : room;
    mproc_value *c = mproc__value_copy_counted(v, &budget);
    if (!c) {
        if (budget != SIZE_MAX)
            return MPROC_ENOMEM;
        if (by_copies)
            return mproc__fail(MPROC_EMSGSIZE, "pickle: memo references expand to more than "
                                               "%d nodes per input byte", COPY_FACTOR);
        return mproc__fail(MPROC_EMSGSIZE, "pickle: more than %zu items (memo copies)",
                           m->lim.max_items);
    }
    size_t used = (by_copies ? m->copy_left : room) - budget;
    m->copy_left -= used;
    m->items += used - 1; /* push() counts the root */
    return push(m, c);
}

/* GET pushes a copy: mproc values have a single owner. The copy's nodes count
 * against max_items, so a pickle of nested references cannot grow exponentially. */
static int memo_get(vm *m, uint64_t key)
{
    memo_slot *s = key <= UINT32_MAX ? memo_find(m, (uint32_t)key, false) : NULL;
    if (!s)
        return mproc__fail(MPROC_EPROTO, "pickle: memo key %llu not found",
                           (unsigned long long)key);
    return copy_ref(m, s->v);
}

static int text_key(vm *m, uint64_t *key)
{
    const char *s;
    size_t n;
    int64_t k = 0;
    int rc = line(m, &s, &n);
    if (!rc)
        rc = parse_int(s, n, &k);
    if (!rc && k < 0)
        rc = mproc__fail(MPROC_EPROTO, "pickle: negative memo key");
    if (rc == MPROC_ERANGE)
        rc = mproc__fail(MPROC_EPROTO, "pickle: memo key out of range");
    if (!rc)
        *key = (uint64_t)k;
    return rc;
}

/* ------------------------------------------------------------ containers */

static int check_child(const mproc_value *v)
{
    if (v->type == MPROC__V_GLOBAL)
        return mproc__fail(MPROC_EPROTO, "pickle: global %s used other than as a callable",
                           v->u.g.name);
    return 0;
}

static int check_height(vm *m, const mproc_value *c)
{
    if (c->height > m->lim.max_depth)
        return mproc__fail(MPROC_EPROTO, "pickle: nesting deeper than %zu", m->lim.max_depth);
    return 0;
}

/* Move st[from..n) into list `l` (which is not among them). */
static int move_into_list(vm *m, mproc_value *l, size_t from)
{
    int rc = 0;
    for (size_t i = from; i < m->n; i++) {
        mproc_value *x = m->st[i];
        m->st[i] = NULL;
        if (!rc)
            rc = check_child(x);
        if (rc) {
            bury(m, x);
            continue;
        }
        rc = mproc_value_append(l, x); /* frees x only on ENOMEM, when nothing can GET it */
    }
    m->n = from;
    return rc ? rc : check_height(m, l);
}

/* Move key/value pairs st[from..n) into map `d`. */
static int move_into_map(vm *m, mproc_value *d, size_t from)
{
    if ((m->n - from) % 2)
        return mproc__fail(MPROC_EPROTO, "pickle: odd number of items for a dict");
    int rc = grave_reserve(m, m->n - from);
    if (rc)
        return rc;
    for (size_t i = from; i < m->n; i += 2) {
        mproc_value *k = m->st[i], *v = m->st[i + 1], *old = NULL;
        m->st[i] = m->st[i + 1] = NULL;
        if (!rc)
            rc = check_child(k);
        if (!rc)
            rc = check_child(v);
        if (!rc && (k->type == MPROC_V_LIST || k->type == MPROC_V_MAP ||
                    k->type == MPROC_V_ERROR))
            rc = mproc__fail(MPROC_EPROTO,
                             "pickle: a dict key is a tuple, list, set or dict (unsupported)");
        if (rc) {
            bury(m, k);
            bury(m, v);
            continue;
        }
        /* Keys are scalars: map_set cannot reject them, only run out of memory. */
        mproc_value *old_key = NULL;
        int r = mproc__map_set(d, k, v, &old_key, &old);
        if (r)
            rc = r;
        bury(m, old_key);
        bury(m, old);
    }
    m->n = from;
    return rc ? rc : check_height(m, d);
}

static mproc_value *top(vm *m, size_t depth) { return m->st[m->n - 1 - depth]; }

static int new_list_from(vm *m, size_t from)
{
    mproc_value *l = mproc_value_list();
    if (!l)
        return MPROC_ENOMEM;
    int rc = move_into_list(m, l, from);
    if (rc) {
        mproc_value_free(l); /* failing aborts the decode: the memo is never read again */
        return rc;
    }
    return push(m, l);
}

/* ------------------------------------------------------------ REDUCE */

static const char *argstr(const mproc_value *v, size_t *n)
{
    if (v->type != MPROC_V_STR)
        return NULL;
    *n = v->u.s.n;
    return v->u.s.p;
}

/* str.encode(encoding) for the encodings Python uses to pickle bytes. */
static int encode_text(vm *m, const mproc_value *s, const mproc_value *enc)
{
    size_t n, en;
    const char *p = argstr(s, &n), *e = argstr(enc, &en);
    if (!p || !e)
        return mproc__fail(MPROC_EPROTO, "pickle: encode() wants (str, encoding)");
    bool latin1 = !strcasecmp(e, "latin1") || !strcasecmp(e, "latin-1") ||
                  !strcasecmp(e, "iso-8859-1") || !strcasecmp(e, "iso8859-1");
    if (!strcasecmp(e, "utf-8") || !strcasecmp(e, "utf8"))
        return push(m, mproc_value_bytes(p, n));
    if (!latin1)
        return mproc__fail(MPROC_EPROTO, "pickle: encode() with encoding '%.40s' refused", e);
    mproc_buf b = {0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc;) {
        uint8_t c = (uint8_t)p[i];
        if (c < 0x80) {
            rc = mproc_buf_append(&b, &c, 1);
            i++;
        } else if ((c == 0xc2 || c == 0xc3) && i + 1 < n) {
            uint8_t o = (uint8_t)((c & 0x03) << 6 | ((uint8_t)p[i + 1] & 0x3f));
            rc = mproc_buf_append(&b, &o, 1);
            i += 2;
        } else {
            rc = mproc__fail(MPROC_EPROTO, "pickle: latin-1 encode of a character above U+00FF");
        }
    }
    if (rc) {
        mproc__buf_free(&b);
        return rc;
    }
    /* bytes were already counted as the str; push_built counts them again: undo */
    m->bytes -= b.len <= m->bytes ? b.len : m->bytes;
    return push_built(m, &b, MPROC_V_BYTES);
}

/* str() of an exception made with several arguments: "[Errno N] text" for
 * OSError and its subclasses given (errno, text), else the args tuple. */
static char *exc_args_str(const char *name, const mproc_value *args)
{
    static const char *const os_errors[] = {
        "OSError", "IOError", "EnvironmentError", "FileNotFoundError", "FileExistsError",
        "PermissionError", "TimeoutError", "IsADirectoryError", "NotADirectoryError",
        "BlockingIOError", "ChildProcessError", "BrokenPipeError", "ConnectionError",
        "ConnectionAbortedError", "ConnectionRefusedError", "ConnectionResetError",
        "InterruptedError", "ProcessLookupError"};
    const mproc_value *a0 = args->u.l.v[0], *a1 = args->u.l.v[1];
    if (args->u.l.n == 2 && a0->type == MPROC_V_INT && a1->type == MPROC_V_STR &&
        strlen(a1->u.s.p) == a1->u.s.n)
        for (size_t i = 0; i < sizeof os_errors / sizeof *os_errors; i++)
            if (strcmp(name, os_errors[i]) == 0) {
                size_t n = a1->u.s.n + 32;
                char *m = malloc(n);
                if (m)
                    snprintf(m, n, "[Errno %lld] %s", (long long)a0->u.i, a1->u.s.p);
                return m;
            }
    char *r = mproc_value_repr(args); /* "[2, 'x']" -> "(2, 'x')" */
    if (r && r[0] == '[') {
        size_t n = strlen(r);
        r[0] = '(';
        r[n - 1] = ')';
    }
    return r;
}

static int op_reduce(vm *m)
{
    if (avail(m) < 2)
        return underflow("REDUCE");
    mproc_value *args = top(m, 0), *g = top(m, 1);
    if (g->type != MPROC__V_GLOBAL)
        return mproc__fail(MPROC_EPROTO, "pickle: REDUCE refused: only whitelisted builtins "
                                         "may be called");
    if (args->type != MPROC_V_LIST)
        return mproc__fail(MPROC_EPROTO, "pickle: REDUCE arguments are not a tuple");
    int rc = grave_reserve(m, 2);
    if (rc)
        return rc;
    m->n -= 2; /* g and args now owned here; both buried below */
    size_t na = args->u.l.n;
    mproc_value *a0 = na > 0 ? args->u.l.v[0] : NULL, *a1 = na > 1 ? args->u.l.v[1] : NULL;
    switch (g->u.g.kind) {
    case G_EXC: {
        char *msg = NULL;
        const char *name = strrchr(g->u.g.name, '.') + 1;
        if (na > 1) { /* str(e) of several arguments, as Python prints it */
            msg = exc_args_str(name, args);
            if (!msg) {
                rc = MPROC_ENOMEM;
                break;
            }
            rc = push(m, mproc_value_error(name, msg));
            free(msg);
            break;
        }
        if (a0 && a0->type == MPROC_V_STR)
            msg = strlen(a0->u.s.p) == a0->u.s.n ? strdup(a0->u.s.p) : NULL;
        else if (a0)
            msg = mproc_value_repr(a0); /* str() of a non-str argument */
        else
            msg = strdup("");
        if (!msg) {
            rc = a0 && a0->type == MPROC_V_STR
                     ? mproc__fail(MPROC_EPROTO, "pickle: exception message contains NUL")
                     : MPROC_ENOMEM;
            break;
        }
        rc = push(m, mproc_value_error(name, msg));
        free(msg);
        break;
    }
    case G_SET:
        if (na == 0) {
            rc = push(m, mproc_value_list());
        } else if (na == 1 && a0->type == MPROC_V_LIST) {
            args->u.l.v[0] = NULL;
            args->u.l.n = 0;
            m->items--; /* re-pushed, not new */
            rc = push(m, a0);
        } else {
            rc = mproc__fail(MPROC_EPROTO, "pickle: %s() wants a list", g->u.g.name);
        }
        break;
    case G_BYTES:
    case G_BYTEARRAY:
        if (na == 0) {
            rc = push(m, mproc_value_bytes("", 0));
        } else if (na == 1 && a0->type == MPROC_V_BYTES) {
            args->u.l.v[0] = NULL;
            args->u.l.n = 0;
            m->items--;
            rc = push(m, a0);
        } else if (na == 2) {
            rc = encode_text(m, a0, a1);
        } else {
            rc = mproc__fail(MPROC_EPROTO, "pickle: unsupported arguments to %s()",
                             g->u.g.name);
        }
        break;
    case G_ENCODE:
        rc = na == 2 ? encode_text(m, a0, a1)
                     : mproc__fail(MPROC_EPROTO, "pickle: encode() wants 2 arguments");
        break;
    default:
        rc = mproc__fail(MPROC_EPROTO, "pickle: REDUCE refused");
    }
    bury(m, args);
    bury(m, g);
    return rc;
}

static int op_global(vm *m, const char *op, const char *mod, size_t ml, const char *name,
                     size_t nl)
{
    char q[200];
    if (ml > 64 || nl > 64 || memchr(mod, 0, ml) || memchr(name, 0, nl)) {
        return mproc__fail(MPROC_EPROTO, "pickle: %s %.*s.%.*s refused (imports are never "
                                         "executed)", op, (int)(ml > 64 ? 64 : ml), mod,
                           (int)(nl > 64 ? 64 : nl), name);
    }
    snprintf(q, sizeof q, "%.*s.%.*s", (int)ml, mod, (int)nl, name);
    char mb[65], nb[65];
    memcpy(mb, mod, ml);
    mb[ml] = 0;
    memcpy(nb, name, nl);
    nb[nl] = 0;
    int kind = global_kind(mb, nb);
    if (!kind)
        return mproc__fail(MPROC_EPROTO, "pickle: %s %s refused (imports are never executed)",
                           op, q);
    mproc_value *g = mproc__value_alloc(MPROC__V_GLOBAL);
    if (!g)
        return MPROC_ENOMEM;
    g->u.g.kind = kind;
    g->u.g.name = strdup(q);
    if (!g->u.g.name) {
        free(g);
        return MPROC_ENOMEM;
    }
    return push(m, g);
}

/* ------------------------------------------------------------ the VM */

static const char *refused_name(uint8_t op)
{
    switch (op) {
    case 'R': return "REDUCE";
    case 'b': return "BUILD";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return NULL;
    }
}

static int step(vm *m, bool *stop)
{
    uint8_t op = *m->p++;
    uint64_t x = 0;
    int rc = 0;
    size_t at;
    switch (op) {
    case 0x80: /* PROTO */
        if ((rc = arg(m, 1, &x)))
            return rc;
        if (x > 5)
            return mproc__fail(MPROC_EPROTO, "pickle: unsupported protocol %d", (int)x);
        return 0;
    case 0x95: /* FRAME: a length hint; opcodes flow on regardless */
        if ((rc = arg(m, 8, &x)))
            return rc;
        if (x > (uint64_t)(m->end - m->p))
            return mproc__fail(MPROC_EPROTO, "pickle: truncated frame");
        return 0;
    case '.': /* STOP */
        if (m->n != 1 || m->nmarks)
            return mproc__fail(MPROC_EPROTO, "pickle: STOP with %zu values and %zu marks on "
                                             "the stack", m->n, m->nmarks);
        if ((rc = check_child(m->st[0])))
            return rc;
        *stop = true;
        return 0;
    case '(': /* MARK */
        if ((rc = count_item(m))) /* marks cost memory too: bounded like items */
            return rc;
        if ((rc = grow((void **)&m->marks, &m->capmarks, m->nmarks + 1, sizeof *m->marks)))
            return rc;
        m->marks[m->nmarks++] = m->n;
        return 0;
    case '0': /* POP */
        if (m->nmarks && m->marks[m->nmarks - 1] == m->n) {
            m->nmarks--; /* Python: POP with nothing above the mark pops the mark */
            return 0;
        }
        if (!m->n)
            return underflow("POP");
        if ((rc = grave_reserve(m, 1)))
            return rc;
        bury(m, m->st[--m->n]);
        return 0;
    case '1': /* POP_MARK */
        if ((rc = pop_mark(m, "POP_MARK", &at)) || (rc = grave_reserve(m, m->n - at)))
            return rc;
        while (m->n > at)
            bury(m, m->st[--m->n]);
        return 0;
    case '2': /* DUP: a copy, as GET */
        if (!avail(m))
            return underflow("DUP");
        return copy_ref(m, top(m, 0));
    case 'N':
        return push(m, mproc_value_nil());
    case 0x88:
    case 0x89:
        return push(m, mproc_value_bool(op == 0x88));
    case 'I': { /* INT text; "00"/"01" are protocol 0's False/True */
        const char *s;
        size_t n;
        int64_t i;
        if ((rc = line(m, &s, &n)))
            return rc;
        if (n == 2 && s[0] == '0' && (s[1] == '0' || s[1] == '1'))
            return push(m, mproc_value_bool(s[1] == '1'));
        if ((rc = parse_int(s, n, &i)))
            return rc;
        return push(m, mproc_value_int(i));
    }
    case 'L': { /* LONG text, optional trailing 'L' */
        const char *s;
        size_t n;
        int64_t i;
        if ((rc = line(m, &s, &n)))
            return rc;
        if (n && s[n - 1] == 'L')
            n--;
        if ((rc = parse_int(s, n, &i)))
            return rc;
        return push(m, mproc_value_int(i));
    }
    case 'J':
        if ((rc = arg(m, 4, &x)))
            return rc;
        return push(m, mproc_value_int((int32_t)(uint32_t)x));
    case 'K':
        if ((rc = arg(m, 1, &x)))
            return rc;
        return push(m, mproc_value_int((int64_t)x));
    case 'M':
        if ((rc = arg(m, 2, &x)))
            return rc;
        return push(m, mproc_value_int((int64_t)x));
    case 0x8a: /* LONG1 */
    case 0x8b: /* LONG4 */
        if ((rc = arg(m, op == 0x8a ? 1 : 4, &x)))
            return rc;
        if (op == 0x8b && (int32_t)(uint32_t)x < 0)
            return mproc__fail(MPROC_EPROTO, "pickle: LONG4 with a negative length");
        if ((rc = need(m, (size_t)x)))
            return rc;
        m->p += x;
        return push_long(m, m->p - x, x);
    case 'F':
        return op_float_text(m);
    case 'G': {
        if ((rc = need(m, 8)))
            return rc;
        uint64_t b = 0;
        for (int i = 0; i < 8; i++)
            b = b << 8 | m->p[i];
        m->p += 8;
        double d;
        memcpy(&d, &b, 8);
        return push(m, mproc_value_float(d));
    }
    case 'S':
        return op_string(m);
    case 'T': /* BINSTRING: signed 4-byte length */
        if ((rc = arg(m, 4, &x)))
            return rc;
        if ((int32_t)(uint32_t)x < 0)
            return mproc__fail(MPROC_EPROTO, "pickle: BINSTRING with a negative length");
        return binblob(m, x, MPROC_V_STR, true);
    case 'U':
        if ((rc = arg(m, 1, &x)))
            return rc;
        return binblob(m, x, MPROC_V_STR, true);
    case 'V':
        return op_unicode(m);
    case 'X':
    case 0x8c:
    case 0x8d:
        if ((rc = arg(m, op == 'X' ? 4 : op == 0x8c ? 1 : 8, &x)))
            return rc;
        return binblob(m, x, MPROC_V_STR, false);
    case 'B':
    case 'C':
    case 0x8e:
    case 0x96:
        if ((rc = arg(m, op == 'B' ? 4 : op == 'C' ? 1 : 8, &x)))
            return rc;
        return binblob(m, x, MPROC_V_BYTES, false);
    case ']':
    case ')':
    case 0x8f: /* EMPTY_SET */
        return push(m, mproc_value_list());
    case '}':
        return push(m, mproc_value_map());
    case 'a': /* APPEND */
        if (avail(m) < 2)
            return underflow("APPEND");
        at = m->n - 1;
        goto appends;
    case 'e':    /* APPENDS */
    case 0x90:   /* ADDITEMS */
        if ((rc = pop_mark(m, op == 'e' ? "APPENDS" : "ADDITEMS", &at)))
            return rc;
        if (at == m->n - avail(m))
            return underflow(op == 'e' ? "APPENDS" : "ADDITEMS");
    appends:
        if (m->st[at - 1]->type != MPROC_V_LIST)
            return mproc__fail(MPROC_EPROTO, "pickle: APPEND to something not a list");
        if ((rc = grave_reserve(m, m->n - at)))
            return rc;
        return move_into_list(m, m->st[at - 1], at);
    case 'l':    /* LIST */
    case 't':    /* TUPLE */
    case 0x91:   /* FROZENSET */
        if ((rc = pop_mark(m, "LIST/TUPLE", &at)) || (rc = grave_reserve(m, m->n - at)))
            return rc;
        return new_list_from(m, at);
    case 0x85:
    case 0x86:
    case 0x87: { /* TUPLE1..3 */
        size_t k = (size_t)(op - 0x84);
        if (avail(m) < k)
            return underflow("TUPLEn");
        if ((rc = grave_reserve(m, k)))
            return rc;
        return new_list_from(m, m->n - k);
    }
    case 'd': /* DICT */
        if ((rc = pop_mark(m, "DICT", &at)))
            return rc;
        {
            mproc_value *d = mproc_value_map();
            if (!d)
                return MPROC_ENOMEM;
            if ((rc = move_into_map(m, d, at))) {
                mproc_value_free(d); /* never on the stack, so never memoized */
                return rc;
            }
            return push(m, d);
        }
    case 's': /* SETITEM */
        if (avail(m) < 3)
            return underflow("SETITEM");
        at = m->n - 2;
        goto setitems;
    case 'u': /* SETITEMS */
        if ((rc = pop_mark(m, "SETITEMS", &at)))
            return rc;
        if (at == m->n - avail(m))
            return underflow("SETITEMS");
    setitems:
        if (m->st[at - 1]->type != MPROC_V_MAP)
            return mproc__fail(MPROC_EPROTO, "pickle: SETITEM on something not a dict");
        return move_into_map(m, m->st[at - 1], at);
    case 'p':
        if ((rc = text_key(m, &x)))
            return rc;
        return memo_put(m, x);
    case 'q':
    case 'r':
        if ((rc = arg(m, op == 'q' ? 1 : 4, &x)))
            return rc;
        return memo_put(m, x);
    case 0x94: /* MEMOIZE */
        return memo_put(m, m->nmemo);
    case 'g':
        if ((rc = text_key(m, &x)))
            return rc;
        return memo_get(m, x);
    case 'h':
    case 'j':
        if ((rc = arg(m, op == 'h' ? 1 : 4, &x)))
            return rc;
        return memo_get(m, x);
    case 'c': { /* GLOBAL "module\nname\n" */
        const char *mod, *name;
        size_t ml, nl;
        if ((rc = line(m, &mod, &ml)) || (rc = line(m, &name, &nl)))
            return rc;
        return op_global(m, "GLOBAL", mod, ml, name, nl);
    }
    case 0x93: { /* STACK_GLOBAL */
        if (avail(m) < 2)
            return underflow("STACK_GLOBAL");
        mproc_value *mod = top(m, 1), *name = top(m, 0);
        if (mod->type != MPROC_V_STR || name->type != MPROC_V_STR)
            return mproc__fail(MPROC_EPROTO, "pickle: STACK_GLOBAL wants two str");
        if ((rc = op_global(m, "STACK_GLOBAL", mod->u.s.p, mod->u.s.n, name->u.s.p,
                            name->u.s.n)))
            return rc;
        if ((rc = grave_reserve(m, 2)))
            return rc;
        mproc_value *g = m->st[--m->n];
        bury(m, m->st[--m->n]);
        bury(m, m->st[--m->n]);
        m->st[m->n++] = g;
        return 0;
    }
    case 'R':
        return op_reduce(m);
    default: {
        const char *name = refused_name(op);
        if (name)
            return mproc__fail(MPROC_EPROTO, "pickle: opcode %s refused (it would import or "
                                             "call code)", name);
        return mproc__fail(MPROC_EPROTO, "pickle: unknown opcode 0x%02x", op);
    }
    }
}

int mproc_pickle_decode(const void *data, size_t len, const mproc_decode_limits *lim,
                        mproc_value **out)
{
    if (!out || (!data && len))
        return mproc__fail(MPROC_EINVAL, "pickle_decode: NULL argument");
    *out = NULL;
    vm m = {.p = data, .end = (const uint8_t *)data + len, .lim = mproc__limits(lim)};
    m.copy_left = len > (SIZE_MAX - COPY_SLACK) / COPY_FACTOR ? SIZE_MAX
                                                               : len * COPY_FACTOR + COPY_SLACK;
    bool stop = false;
    int rc = 0;
    while (!rc && !stop) {
        if (m.p == m.end)
            rc = mproc__fail(MPROC_EPROTO, "pickle: truncated input (no STOP)");
        else
            rc = step(&m, &stop);
    }
    if (!rc && m.p != m.end)
        rc = mproc__fail(MPROC_EPROTO, "pickle: %zu trailing bytes after STOP",
                         (size_t)(m.end - m.p));
    if (!rc) {
        *out = m.st[0];
        m.n = 0;
    }
    for (size_t i = 0; i < m.n; i++)
        mproc_value_free(m.st[i]);
    for (size_t i = 0; i < m.ngrave; i++)
        mproc_value_free(m.grave[i]);
    free(m.st);
    free(m.marks);
    free(m.memo);
    free(m.grave);
    return rc;
}

/* ------------------------------------------------------------ encode */

static int put1(mproc_buf *b, uint8_t c) { return mproc_buf_append(b, &c, 1); }

static int put_le(mproc_buf *b, uint64_t x, size_t n)
{
    uint8_t t[8];
    for (size_t i = 0; i < n; i++)
        t[i] = (uint8_t)(x >> (8 * i));
    return mproc_buf_append(b, t, n);
}

/* str/bytes with the shortest length form: (1-byte op, 4-byte op, 8-byte op). */
static int put_sized(mproc_buf *b, const void *p, size_t n, uint8_t op1, uint8_t op4, uint8_t op8)
{
    int rc;
    if (n < 256)
        rc = put1(b, op1) || put1(b, (uint8_t)n) ? MPROC_ENOMEM : 0;
    else if (n <= UINT32_MAX)
        rc = put1(b, op4) || put_le(b, n, 4) ? MPROC_ENOMEM : 0;
    else
        rc = put1(b, op8) || put_le(b, n, 8) ? MPROC_ENOMEM : 0;
    return rc ? rc : mproc_buf_append(b, p, n);
}

static int put_text(mproc_buf *b, const char *s, size_t n)
{
    return put_sized(b, s, n, 0x8c, 'X', 0x8d);
}

static int put_int(mproc_buf *b, int64_t i)
{
    if (i >= 0 && i < 256)
        return put1(b, 'K') || put1(b, (uint8_t)i) ? MPROC_ENOMEM : 0;
    if (i >= 0 && i < 65536)
        return put1(b, 'M') || put_le(b, (uint64_t)i, 2) ? MPROC_ENOMEM : 0;
    if (i >= INT32_MIN && i <= INT32_MAX)
        return put1(b, 'J') || put_le(b, (uint64_t)i, 4) ? MPROC_ENOMEM : 0;
    /* LONG1: the shortest two's complement that keeps the sign (as encode_long) */
    uint64_t u = (uint64_t)i;
    size_t n = 8;
    while (n > 1) {
        uint8_t hi = (uint8_t)(u >> (8 * (n - 1))), next = (uint8_t)(u >> (8 * (n - 2)));
        if ((hi == 0x00 && !(next & 0x80)) || (hi == 0xff && (next & 0x80)))
            n--;
        else
            break;
    }
    return put1(b, 0x8a) || put1(b, (uint8_t)n) || put_le(b, u, n) ? MPROC_ENOMEM : 0;
}

static int penc(mproc_buf *b, const mproc_value *v, unsigned depth)
{
    if (depth > MPROC__MAX_NEST)
        return mproc__fail(MPROC_EINVAL, "pickle: value nested deeper than %d", MPROC__MAX_NEST);
    int rc = 0;
    switch ((int)v->type) {
    case MPROC_V_NIL:
        return put1(b, 'N');
    case MPROC_V_BOOL:
        return put1(b, v->u.b ? 0x88 : 0x89);
    case MPROC_V_INT:
        return put_int(b, v->u.i);
    case MPROC_V_FLOAT: {
        uint64_t x;
        memcpy(&x, &v->u.d, 8);
        uint8_t t[9] = {'G'};
        for (int i = 0; i < 8; i++)
            t[1 + i] = (uint8_t)(x >> (56 - 8 * i));
        return mproc_buf_append(b, t, 9);
    }
    case MPROC_V_STR:
        return put_text(b, v->u.s.p, v->u.s.n);
    case MPROC_V_BYTES:
        return put_sized(b, v->u.s.p, v->u.s.n, 'C', 'B', 0x8e);
    case MPROC_V_ERROR:
        /* builtins.<type>(message): Python's loads() rebuilds the exception */
        /* Exception groups take (message, exceptions): Python could not load them from (message,). */
        if (!exc_name(v->u.e.type) || ends_with(v->u.e.type, "ExceptionGroup") ||
            strcmp(v->u.e.type, "ExceptionGroup") == 0)
            return mproc__fail(MPROC_EINVAL, "pickle: '%.64s' is not a builtin exception name",
                               v->u.e.type);
        if ((rc = put_text(b, "builtins", 8)) ||
            (rc = put_text(b, v->u.e.type, strlen(v->u.e.type))) || (rc = put1(b, 0x93)) ||
            (rc = put_text(b, v->u.e.msg, strlen(v->u.e.msg))) || (rc = put1(b, 0x85)))
            return rc;
        return put1(b, 'R');
    case MPROC_V_LIST:
        if ((rc = put1(b, ']')))
            return rc;
        for (size_t i = 0; i < v->u.l.n; i += 1000) {
            size_t k = v->u.l.n - i < 1000 ? v->u.l.n - i : 1000;
            if (k > 1 && (rc = put1(b, '(')))
                return rc;
            for (size_t j = i; j < i + k; j++)
                if ((rc = penc(b, v->u.l.v[j], depth + 1)))
                    return rc;
            if ((rc = put1(b, k > 1 ? 'e' : 'a')))
                return rc;
        }
        return 0;
    case MPROC_V_MAP:
        if ((rc = put1(b, '}')))
            return rc;
        for (size_t i = 0; i < v->u.m.n; i += 1000) {
            size_t k = v->u.m.n - i < 1000 ? v->u.m.n - i : 1000;
            if (k > 1 && (rc = put1(b, '(')))
                return rc;
            for (size_t j = i; j < i + k; j++)
                if ((rc = penc(b, v->u.m.e[j].key, depth + 1)) ||
                    (rc = penc(b, v->u.m.e[j].val, depth + 1)))
                    return rc;
            if ((rc = put1(b, k > 1 ? 'u' : 's')))
                return rc;
        }
        return 0;
    case MPROC_V_EXT:
        return mproc__fail(MPROC_EINVAL, "pickle: a MessagePack ext value (type %d) has no "
                           "pickle form", v->u.s.ext);
    default:
        return mproc__fail(MPROC_EINVAL, "pickle: unknown value type %d", (int)v->type);
    }
}

int mproc__pickle_body(mproc_buf *b, const mproc_value *v)
{
    size_t mark = b->len;
    int rc = penc(b, v, 0);
    if (rc)
        b->len = mark;
    return rc;
}

int mproc__pickle_text(mproc_buf *b, const char *s, size_t n)
{
    return put_text(b, s, n);
}

int mproc_pickle_encode(const mproc_value *v, int protocol, mproc_buf *out)
{
    if (!v || !out)
        return mproc__fail(MPROC_EINVAL, "pickle_encode: NULL argument");
    if (protocol == 0)
        protocol = 4;
    if (protocol != 4 && protocol != 5)
        return mproc__fail(MPROC_EINVAL, "pickle_encode: protocol %d (4 or 5 only)", protocol);
    size_t mark = out->len;
    int rc = put1(out, 0x80);
    if (!rc)
        rc = put1(out, (uint8_t)protocol);
    if (!rc)
        rc = penc(out, v, 0);
    if (!rc)
        rc = put1(out, '.');
    if (rc)
        out->len = mark;
    return rc;
}
