/* auth.c — CPython's authkey handshake (multiprocessing.connection
 * deliver_challenge / answer_challenge), legacy HMAC-MD5 and "{digest}" forms. */
#include <string.h>
#include <sys/random.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "conn_int.h"

#define CHALLENGE_LEN 40     /* MESSAGE_LENGTH of Python 3.12+ */
#define LEGACY_CHALLENGE_LEN 20
#define MD5_LEN 16
#define MAX_DIGEST_NAME 8    /* len("sha3_384") */

static const EVP_MD *digest_by_name(const char *name, size_t n)
{
    static const struct {
        const char *name;
        const EVP_MD *(*md)(void);
    } allowed[] = {{"md5", EVP_md5},         {"sha256", EVP_sha256},     {"sha384", EVP_sha384},
                   {"sha3_256", EVP_sha3_256}, {"sha3_384", EVP_sha3_384}};
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        if (strlen(allowed[i].name) == n && memcmp(allowed[i].name, name, n) == 0)
            return allowed[i].md();
    return NULL;
}

int mproc__auth_split(const uint8_t *msg, size_t n, char name[16], const uint8_t **payload,
                      size_t *plen)
{
    name[0] = 0;
    if (n == LEGACY_CHALLENGE_LEN || n == MD5_LEN) {
        *payload = msg;
        *plen = n;
        return 0;
    }
    if (n > 0 && msg[0] == '{') {
        /* msg.find(b'}', 1, _MAX_DIGEST_LEN + 2) */
        size_t lim = n < MAX_DIGEST_NAME + 2 ? n : MAX_DIGEST_NAME + 2;
        const uint8_t *curly = memchr(msg + 1, '}', lim - 1);
        if (curly && digest_by_name((const char *)msg + 1, (size_t)(curly - msg - 1))) {
            size_t k = (size_t)(curly - msg - 1);
            memcpy(name, msg + 1, k);
            name[k] = 0;
            *payload = curly + 1;
            *plen = n - k - 2;
            return 0;
        }
    }
    return mproc__fail(MPROC_EAUTH, "handshake: unsupported message length (%zu), missing digest "
                                    "prefix, or unsupported digest", n);
}

static int hmac(const char *name, const void *key, size_t klen, const uint8_t *msg, size_t n,
                uint8_t *out, unsigned *outlen)
{
    const EVP_MD *md = digest_by_name(name, strlen(name));
    static const uint8_t nokey = 0;
    if (klen > INT32_MAX)
        return mproc__fail(MPROC_EINVAL, "handshake: authkey too long");
    if (!md || !HMAC(md, klen ? key : &nokey, (int)klen, msg, n, out, outlen))
        return mproc__fail(MPROC_EAUTH, "handshake: HMAC-%s is unavailable", name);
    return 0;
}

int mproc__auth_response(const void *key, size_t klen, const uint8_t *msg, size_t n,
                         uint8_t *out, size_t *outlen)
{
    char name[16];
    const uint8_t *pl;
    size_t pn;
    int rc = mproc__auth_split(msg, n, name, &pl, &pn);
    if (rc)
        return rc;
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned ml = 0;
    if (!name[0]) { /* legacy peer: a raw HMAC-MD5 of the whole message */
        if ((rc = hmac("md5", key, klen, msg, n, mac, &ml)) != 0)
            return rc;
        memcpy(out, mac, ml);
        *outlen = ml;
        return 0;
    }
    /* The MAC covers the entire message, "{digest}" prefix included. */
    if ((rc = hmac(name, key, klen, msg, n, mac, &ml)) != 0)
        return rc;
    size_t k = strlen(name);
    out[0] = '{';
    memcpy(out + 1, name, k);
    out[k + 1] = '}';
    memcpy(out + k + 2, mac, ml);
    *outlen = k + 2 + ml;
    return 0;
}

int mproc__auth_verify(const void *key, size_t klen, const uint8_t *msg, size_t n,
                       const uint8_t *resp, size_t rn)
{
    char name[16];
    const uint8_t *mac = NULL;
    size_t macn = 0;
    int rc = mproc__auth_split(resp, rn, name, &mac, &macn);
    if (rc)
        return rc;
    if (!name[0])
        strcpy(name, "md5");
    uint8_t want[EVP_MAX_MD_SIZE];
    unsigned wn = 0;
    if ((rc = hmac(name, key, klen, msg, n, want, &wn)) != 0)
        return rc;
    if (wn != macn)
        return mproc__fail(MPROC_EAUTH, "handshake: expected '%s' of length %u, got %zu", name, wn,
                           macn);
    if (CRYPTO_memcmp(want, mac, wn) != 0)
        return mproc__fail(MPROC_EAUTH, "handshake: digest received was wrong (authkey differs)");
    return 0;
}

int mproc__auth_check_digest(const char *digest)
{
    const char *name = digest && digest[0] ? digest : "sha256";
    if (strcmp(name, "legacy") == 0 || digest_by_name(name, strlen(name)))
        return 0;
    return mproc__fail(MPROC_EINVAL, "handshake: unknown digest '%s' (md5, sha256, sha384, "
                                     "sha3_256, sha3_384 or legacy)", name);
}

int mproc__auth_challenge(const char *digest, uint8_t *out, size_t *outlen)
{
    int rc = mproc__auth_check_digest(digest);
    if (rc)
        return rc;
    bool legacy = digest && strcmp(digest, "legacy") == 0;
    const char *name = digest && digest[0] ? digest : "sha256";
    size_t k = 0;
    if (!legacy) {
        k = strlen(name);
        out[0] = '{';
        memcpy(out + 1, name, k);
        out[k + 1] = '}';
        k += 2;
    }
    size_t r = legacy ? LEGACY_CHALLENGE_LEN : CHALLENGE_LEN;
    for (size_t got = 0; got < r;) {
        ssize_t n = getrandom(out + k + got, r - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return mproc__fail(mproc__errno(), "handshake: getrandom failed");
        got += (size_t)n;
    }
    *outlen = k + r;
    return 0;
}

/* Receive one handshake message of at most 256 bytes into out. */
static int recv_small(mproc_connection *c, mproc_deadline d, uint8_t *out, size_t *n)
{
    size_t saved = c->max_message;
    c->max_message = MPROC__AUTH_MSG_MAX;
    uint8_t *data;
    bool owned;
    int rc = mproc__conn_recv_frame(c, UINT64_MAX, NULL, d, &data, n, &owned);
    c->max_message = saved;
    if (rc == MPROC_EMSGSIZE || rc == MPROC_EPROTO)
        return mproc__fail(MPROC_EAUTH, "handshake: the peer does not speak the handshake (%s)",
                           mproc_errmsg());
    if (rc == MPROC_ETIMEDOUT)
        return mproc__fail(rc, "handshake: the peer stalled");
    if (rc == MPROC_ECLOSED)
        return mproc__fail(rc, "handshake: the peer closed the connection (wrong authkey, or none?)");
    if (rc)
        return rc;
    memcpy(out, data, *n);
    if (owned)
        free(data);
    return 0;
}

static int send_small(mproc_connection *c, const void *p, size_t n, mproc_deadline d)
{
    int rc = mproc__conn_send_until(c, p, n, d);
    if (rc == MPROC_EPIPE || rc == MPROC_ECONNRESET)
        return mproc__fail(MPROC_ECLOSED, "handshake: the peer closed the connection");
    return rc;
}

int mproc__auth_deliver(mproc_connection *c, const void *key, size_t klen, const char *digest,
                        mproc_deadline d)
{
    const size_t cl = sizeof MPROC__CHALLENGE - 1;
    uint8_t msg[96], resp[MPROC__AUTH_MSG_MAX];
    size_t mn, rn;
    memcpy(msg, MPROC__CHALLENGE, cl);
    int rc = mproc__auth_challenge(digest, msg + cl, &mn);
    if (!rc)
        rc = send_small(c, msg, cl + mn, d);
    if (!rc)
        rc = recv_small(c, d, resp, &rn);
    if (rc)
        return rc;
    rc = mproc__auth_verify(key, klen, msg + cl, mn, resp, rn);
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "%s", mproc_errmsg());
        send_small(c, MPROC__FAILURE, sizeof MPROC__FAILURE - 1, d);
        return mproc__fail(MPROC_EAUTH, "%s", why);
    }
    return send_small(c, MPROC__WELCOME, sizeof MPROC__WELCOME - 1, d);
}

int mproc__auth_answer(mproc_connection *c, const void *key, size_t klen, mproc_deadline d)
{
    const size_t cl = sizeof MPROC__CHALLENGE - 1;
    uint8_t msg[MPROC__AUTH_MSG_MAX], out[80];
    size_t mn, on;
    int rc = recv_small(c, d, msg, &mn);
    if (rc)
        return rc;
    if (mn < cl || memcmp(msg, MPROC__CHALLENGE, cl) != 0)
        return mproc__fail(MPROC_EAUTH, "handshake: protocol error, expected a challenge");
    if (mn - cl < LEGACY_CHALLENGE_LEN)
        return mproc__fail(MPROC_EAUTH, "handshake: challenge too short: %zu bytes", mn - cl);
    if ((rc = mproc__auth_response(key, klen, msg + cl, mn - cl, out, &on)) != 0)
        return rc;
    if ((rc = send_small(c, out, on, d)) != 0)
        return rc;
    if ((rc = recv_small(c, d, msg, &mn)) != 0)
        return rc == MPROC_ECLOSED ? mproc__fail(MPROC_EAUTH, "handshake: digest sent was rejected "
                                                              "(the peer closed)") : rc;
    if (mn != sizeof MPROC__WELCOME - 1 || memcmp(msg, MPROC__WELCOME, mn) != 0)
        return mproc__fail(MPROC_EAUTH, "handshake: digest sent was rejected (authkey differs)");
    return 0;
}

void mproc__auth_thread_done(void)
{
    OPENSSL_thread_stop();
}
