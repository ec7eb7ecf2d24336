import lib from './index.js';
export const { open, Connection, Writer, Subscription, CallbackSubscription, LaminarError, version } = lib;
export default lib;
