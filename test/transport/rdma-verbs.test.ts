/** The Verbs interface suite (verbs-suite.ts) on the software provider. */
import { softProvider } from "../../src/transport/rdma/soft.js";
import { verbsSuite } from "./verbs-suite.js";

verbsSuite(softProvider, { device: "soft0", refused: "KOALA_ERR_VERBS", rnrExhausts: true, softCounters: true });
