/* conn_int.h — private pieces of the connection layer shared by its files
 * and by the fuzz targets (frame header codec, handshake message checks). */
#ifndef MPROC_CONN_INT_H
#define MPROC_CONN_INT_H

#include "internal.h"
#include "mproc/connection.h"

#define MPROC__RBUF_SIZE ((size_t)64 << 10)

struct mproc_connection {
    int fd;
    bool readable, writable;
    bool is_socket;
    bool broken;           /* stream out of sync: only close() is left */
    bool no_readahead;
    mproc_codec codec;
    int pickle_protocol;
    size_t max_message;
    mproc_decode_limits limits;
    /* read side: buffered bytes rbuf[rpos..rlen) */
    uint8_t *rbuf;
    size_t rpos, rlen;
    /* a frame whose header was consumed: its length, and for big frames the
     * malloc'd destination being filled (big_got bytes so far) */
    bool have_header;
    uint64_t cur_len;
    uint8_t *big;
    size_t big_got;
    /* a big frame completely received but not yet taken (recv_bytes_into too small) */
    bool big_done;
    /* encode scratch for send(): 4 header bytes then the payload */
    mproc_buf wbuf;
};

/* Frame header: 4-byte big-endian signed length, or -1 then 8-byte big-endian length. */
#define MPROC__FRAME_SHORT_MAX 0x7fffffffu
/* Encode the header for a `len`-byte message into out (12 bytes of room); returns its size. */
size_t mproc__frame_header(uint8_t out[12], uint64_t len);
/* Parse a header from p[0..n): 0 and *len, *hlen set; MPROC_EAGAIN if more bytes
 * are needed; MPROC_EPROTO for a negative length other than -1. */
int mproc__frame_parse(const uint8_t *p, size_t n, uint64_t *len, size_t *hlen);

/* Deadline-bounded send / receive of one frame. recv: *data points into the
 * connection's buffer (valid until the next call; *owned false), to `dest` (a big
 * frame of at most keep_over bytes read straight there; *owned false), or to a
 * malloc'd block (*owned true). A frame longer than keep_over stays queued:
 * MPROC_EMSGSIZE with *len set. */
int mproc__conn_send_until(mproc_connection *c, const void *buf, size_t len, mproc_deadline d);
int mproc__conn_recv_frame(mproc_connection *c, uint64_t keep_over, uint8_t *dest,
                           mproc_deadline d, uint8_t **data, size_t *len, bool *owned);

/* ---------------------------------------------------------------- handshake */

#define MPROC__AUTH_MSG_MAX 256 /* recv_bytes(256) in CPython */
#define MPROC__CHALLENGE "#CHALLENGE#"
#define MPROC__WELCOME "#WELCOME#"
#define MPROC__FAILURE "#FAILURE#"

/* CPython's _get_digest_name_and_payload: a 16- or 20-byte message is legacy
 * (name ""), else "{name}payload" with an allowed name. 0 or MPROC_EAUTH. */
int mproc__auth_split(const uint8_t *msg, size_t n, char name[16], const uint8_t **payload,
                      size_t *plen);
/* _create_response: the reply to challenge body `msg` (without "#CHALLENGE#"). out needs
 * 80 bytes. 0 or MPROC_EAUTH. */
int mproc__auth_response(const void *key, size_t klen, const uint8_t *msg, size_t n,
                         uint8_t *out, size_t *outlen);
/* _verify_challenge: 0 if `resp` is a valid reply to `msg`, else MPROC_EAUTH with a message. */
int mproc__auth_verify(const void *key, size_t klen, const uint8_t *msg, size_t n,
                       const uint8_t *resp, size_t rn);
/* 0 if `digest` (NULL = sha256, or "legacy") can be used, else MPROC_EINVAL with a message. */
int mproc__auth_check_digest(const char *digest);
/* Build the challenge body for digest `digest` (see mproc_auth_opts) into out
 * (80 bytes of room). 0, MPROC_EINVAL (unknown digest), -errno (no randomness). */
int mproc__auth_challenge(const char *digest, uint8_t *out, size_t *outlen);
/* Both halves over a connection, bounded by `d`. */
int mproc__auth_deliver(mproc_connection *c, const void *key, size_t klen, const char *digest,
                        mproc_deadline d);
int mproc__auth_answer(mproc_connection *c, const void *key, size_t klen, mproc_deadline d);
/* A thread that ran a handshake and is about to end frees OpenSSL's state
 * for it now, while whoever waits for the thread still waits (OpenSSL
 * would free it at thread exit, after the wait, racing process exit). */
void mproc__auth_thread_done(void);

#endif
