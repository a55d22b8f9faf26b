/* fuzz_msgpack.c — libFuzzer target for the MessagePack decoder: arbitrary
 * bytes must decode or fail cleanly; what decodes must survive a round trip. */
#include <stdlib.h>

#include "mproc/value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mproc_decode_limits lim = {.max_depth = 32, .max_items = 10000, .max_bytes = 1 << 20};
    mproc_value *v = NULL;
    if (mproc_msgpack_decode(data, size, &lim, &v) != 0) {
        if (v)
            abort(); /* failure leaves *out NULL */
        return 0;
    }
    mproc_buf out = {0};
    if (mproc_msgpack_encode(v, &out) != 0)
        abort(); /* anything decoded is encodable */
    mproc_value *w = NULL;
    if (mproc_msgpack_decode(out.data, out.len, &lim, &w) != 0 || !mproc_value_equal(v, w))
        abort();
    char *r = mproc_value_repr(v);
    if (!r)
        abort();
    free(r);
    mproc_value *c = mproc_value_copy(v);
    if (!c || !mproc_value_equal(c, v))
        abort();
    mproc_value_free(c);
    mproc_value_free(w);
    mproc_value_free(v);
    free(out.data);
    return 0;
}
