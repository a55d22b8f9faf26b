/* fuzz_pickle.c — libFuzzer target for the safe pickle decoder: arbitrary
 * bytes must decode or fail cleanly (never import or call); what decodes
 * must re-encode (protocol 4 and 5) and decode back to an equal value. */
#include <stdlib.h>

#include "mproc/value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void round_trip(const mproc_value *v, int protocol)
{
    mproc_buf out = {0};
    if (mproc_pickle_encode(v, protocol, &out) != 0)
        abort(); /* anything decoded is encodable */
    mproc_value *w = NULL;
    /* Default limits: memo copies may make the tree larger than the input was. */
    if (mproc_pickle_decode(out.data, out.len, NULL, &w) != 0 || !mproc_value_equal(v, w))
        abort();
    mproc_value_free(w);
    free(out.data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mproc_decode_limits lim = {.max_depth = 32, .max_items = 10000, .max_bytes = 1 << 20};
    mproc_value *v = NULL;
    if (mproc_pickle_decode(data, size, &lim, &v) != 0) {
        if (v)
            abort();
        return 0;
    }
    round_trip(v, 4);
    round_trip(v, 5);
    char *r = mproc_value_repr(v);
    if (!r)
        abort();
    free(r);
    mproc_value_free(v);
    return 0;
}
